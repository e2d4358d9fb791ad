"""DBA: distributed backdoor attack.

Xie, Huang, Chen, Li. "DBA: Distributed Backdoor Attacks against Federated
Learning." ICLR 2020, OpenReview rkgyS0VFvr (no arXiv version).

A global trigger is decomposed into as many local patterns as there are
colluding attackers (``len(task.coalition)``, never a fixed 4); the attacker at
position ``i = coalition.index(partition_id)`` poisons a fraction ``p``
(``poison_fraction``) of every batch with local pattern ``i`` and relabels it
to ``t`` (``target``). After local training it may scale its update by the
paper's scale factor ``gamma`` (``scale``): submits ``G + gamma (X - G)``.
The server measures the ASR of the FULL global trigger (name ``"dba"``),
which none of the attackers ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from fedsec.clients.attacks._common import check, check_fraction, check_target, coerce_trigger, is_num, rewrite_update
from fedsec.clients.attacks.badnets import TriggerBackdoor
from fedsec.clients.base import ClientTask, register_behaviour
from fedsec.data.triggers import Trigger


@register_behaviour("dba")
@dataclass(frozen=True, kw_only=True)
class DBA(TriggerBackdoor):
    """DBA (Xie et al. 2020): each colluder trains on its own piece of the global trigger."""

    eval_name: ClassVar[str] = "dba"

    target: int = 0
    """t: the attacker's class."""
    poison_fraction: float = 0.3
    """p: fraction of every batch carrying the local pattern (paper: 20/64)."""
    scale: float = 1.0
    """gamma: scale factor on the submitted update (1 = none)."""
    trigger: Trigger | dict = field(
        default_factory=lambda: Trigger(kind="patch", size=4, location="top_left", margin=0)
    )
    """The global trigger, split row-major into len(coalition) local patterns."""

    def __post_init__(self) -> None:
        check_target(self)
        check_fraction(self)
        check(is_num(self.scale) and self.scale > 0, "scale", self.scale, "a number > 0")
        coerce_trigger(self)

    @classmethod
    def vectorizable(cls) -> bool:
        # Training is plain SGD on poisoned batches; finalize only rescales each client's
        # trained update (G + gamma (X - G)) afterwards, which a batched engine applies per
        # client like any finalize.
        return True

    def local_trigger(self, task: ClientTask):
        if task.partition_id not in task.coalition:
            raise ValueError(f"dba: partition {task.partition_id} is not in its coalition {task.coalition}")
        pieces = self.trigger.split(len(task.coalition))
        return pieces[task.coalition.index(task.partition_id)]

    def finalize(self, task: ClientTask) -> None:
        gamma = float(self.scale)
        if gamma != 1.0:
            rewrite_update(task.model, task.global_state, lambda d, k: gamma * d, include_buffers=True)

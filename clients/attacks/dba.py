"""DBA: distributed backdoor attack.

Xie, Huang, Chen, Li. "DBA: Distributed Backdoor Attacks against Federated
Learning." ICLR 2020, OpenReview rkgyS0VFvr (no arXiv version).

A global trigger is decomposed into as many local patterns as there are
colluding attackers (``len(ctx.coalition)``, never a fixed 4); the attacker at
position ``i = coalition.index(partition_id)`` poisons a fraction ``p``
(``poison_fraction``) of every batch with local pattern ``i`` and relabels it
to ``t`` (``target``). After local training it may scale its update by the
paper's scale factor ``gamma`` (``scale``): submits ``G + gamma (X - G)``.
The server measures the ASR of the FULL global trigger (name ``"dba"``),
which none of the attackers ever trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedsec.clients.attacks._common import check, check_fraction, check_target, coerce_trigger, is_num, rewrite_update
from fedsec.clients.attacks.badnets import TriggerBackdoor
from fedsec.clients.base import ClientContext, register_behaviour
from fedsec.data.triggers import Trigger


@dataclass(frozen=True, kw_only=True)
class DBAParams:
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


@register_behaviour("dba")
class DBA(TriggerBackdoor):
    """DBA (Xie et al. 2020): each colluder trains on its own piece of the global trigger."""

    Params = DBAParams
    eval_name = "dba"

    def local_trigger(self, ctx: ClientContext):
        if ctx.partition_id not in ctx.coalition:
            raise ValueError(f"dba: partition {ctx.partition_id} is not in its coalition {ctx.coalition}")
        pieces = self.params.trigger.split(len(ctx.coalition))
        return pieces[ctx.coalition.index(ctx.partition_id)]

    def after_train(self, model, ctx: ClientContext) -> dict[str, float]:
        gamma = float(self.params.scale)
        if gamma != 1.0:
            rewrite_update(model, ctx.global_state, lambda d, k: gamma * d, include_buffers=True)
        return {}

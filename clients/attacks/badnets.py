"""BadNets: trigger-stamping data poisoning.

Gu, Dolan-Gavitt, Garg. "BadNets: Identifying Vulnerabilities in the Machine
Learning Model Supply Chain." NIPS MLSec Workshop 2017, arXiv:1708.06733.

The attacker stamps a trigger (a small pixel pattern) on a fraction ``p``
(``poison_fraction``) of its training samples and relabels them: all-to-one
(every triggered sample -> class ``t``, ``target``) or all-to-all
(``y -> (y + 1) mod C``, ``all_to_all = true``). Poisoning is per mini-batch
(``per = "batch"``: every batch carries ``round(p * B)`` poisoned samples, as
in the federated backdoor literature) or once over the local dataset
(``per = "dataset"``: the paper's setting, the chosen samples are replaced by
their poisoned copies). The server measures the ASR of the trigger under the
name ``"badnets"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from fedsec.clients.attacks._common import check, check_fraction, check_target, coerce_trigger, is_int, poison_rows
from fedsec.clients.base import Behaviour, ClientTask, register_behaviour
from fedsec.data import TensorData
from fedsec.data.triggers import Trigger
from fedsec.metrics import EvalTrigger


@dataclass(frozen=True, kw_only=True)
class TriggerBackdoor(Behaviour):
    """Shared machinery of trigger backdoors: relabelling, stamping, the eval trigger.

    Subclasses have the fields ``target``, ``poison_fraction`` and ``trigger``
    (and optionally ``per``, ``all_to_all``, ``num_classes``). Poisoning per
    dataset happens in ``prepare`` (replacing ``task.data``), per batch in
    ``poison_batch``; both draw from ``task.generator``.
    """

    eval_name: ClassVar[str] = "backdoor"

    def relabel_fn(self, num_classes: int):
        if getattr(self, "all_to_all", False):
            return lambda y: (y + 1) % num_classes
        target = self.target
        return lambda y: torch.full_like(y, target)

    def check_classes(self, task: ClientTask) -> None:
        check(self.target < task.num_classes, "target", self.target, f"a class index < {task.num_classes}")
        if getattr(self, "all_to_all", False):
            check(self.num_classes == task.num_classes, "num_classes", self.num_classes,
                  f"the dataset's {task.num_classes} classes")

    def local_trigger(self, task: ClientTask) -> Trigger:
        return self.trigger

    def prepare(self, task: ClientTask) -> None:
        self.check_classes(task)
        if getattr(self, "per", "batch") != "dataset":
            return
        x, y = poison_rows(task.data.x, task.data.y, self.poison_fraction, self.local_trigger(task),
                           self.relabel_fn(task.num_classes), task.generator)
        task.data = TensorData(x, y)

    def poison_batch(self, x: torch.Tensor, y: torch.Tensor, task: ClientTask):
        if getattr(self, "per", "batch") != "batch":
            return x, y
        return poison_rows(x, y, self.poison_fraction, self.local_trigger(task),
                           self.relabel_fn(task.num_classes), task.generator)

    def eval_triggers(self, coalition: tuple[int, ...]) -> dict[str, EvalTrigger]:
        if getattr(self, "all_to_all", False):
            c = self.num_classes
            return {self.eval_name: EvalTrigger(self.trigger.apply, target_fn=lambda y: (y + 1) % c)}
        return {self.eval_name: EvalTrigger(self.trigger.apply, target=self.target)}


@register_behaviour("badnets")
@dataclass(frozen=True, kw_only=True)
class BadNets(TriggerBackdoor):
    """BadNets (Gu et al. 2017): stamp a trigger on a fraction of samples, relabel them."""

    eval_name: ClassVar[str] = "badnets"

    target: int = 0
    """t: the attacker's class (all-to-one)."""
    poison_fraction: float = 0.3
    """p: fraction of poisoned samples per batch (or of the dataset)."""
    per: str = "batch"
    all_to_all: bool = False
    """y -> (y + 1) mod C instead of y -> t."""
    num_classes: int = 10
    """C, for the all-to-all evaluation mapping (must match the dataset; checked when
    training). Unused for all-to-one, where ``target`` is checked against the dataset."""
    trigger: Trigger | dict = field(default_factory=lambda: Trigger(kind="patch", size=3))

    def __post_init__(self) -> None:
        check_target(self)
        check_fraction(self)
        check(self.per in ("batch", "dataset"), "per", self.per, "'batch' or 'dataset'")
        check(isinstance(self.all_to_all, bool), "all_to_all", self.all_to_all, "true or false")
        check(is_int(self.num_classes) and self.num_classes >= 2, "num_classes",
              self.num_classes, "an integer >= 2")
        coerce_trigger(self)

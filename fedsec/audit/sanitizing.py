"""``sanitizing``: an honest client that audits its own data and drops what a detector flags.

The data-side defenses of the lecture (activation clustering, Chen et al.
2019; spectral signatures, Tran et al. 2018; frequency artifacts, Zeng et al.
2021) as a client behaviour: in ``prepare`` the client trains a copy of the
received global model on its own data for ``warmup_epochs`` (the detectors
read a model trained on the audited data; 0 = audit with the global model as
received), runs the detector on its data, and replaces ``task.data`` with
the samples the detector keeps; training then proceeds as an honest client.

``poisoned_by`` models the threat this defends against, a data-collection
attack: the data this honest client collected were poisoned by a third party
(``{behaviour = "badnets", params = {per = "dataset", ...}}``: that
behaviour's data stages, ``prepare`` and one pass of ``poison_batch``, are
applied to the partition first, and its triggers are measured by the
server). The reply's metrics report ``sanitized_removed`` and, when
``poisoned_by`` is set, ``sanitized_recall`` and ``sanitized_clean_removed``
(against the rows the poisoning changed). A scenario lists such clients under
``[[attack]]`` (``behaviour = "sanitizing"``), so they count as "malicious"
in the detection figures although they only defend.

The behaviour registers itself when this module is imported: name it in the
scenario's ``run.imports = ["fedsec.audit.sanitizing"]`` so that every
process (driver, Ray actors) knows it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from fedsec.audit.base import DETECTORS, AuditTarget, is_int
from fedsec.clients.base import BEHAVIOURS, Behaviour, ClientTask, register_behaviour
from fedsec.data import TensorData
from fedsec.metrics import EvalTrigger
from fedsec.training import sgd_train


def _bad(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"sanitizing.{name}: got {value!r}, expected {expected}")


@register_behaviour("sanitizing")
@dataclass(frozen=True, kw_only=True)
class Sanitizing(Behaviour):
    """Honest client that removes the samples a data detector flags before training."""

    detector: str = "activation_clustering"
    """A data detector of :data:`fedsec.audit.DETECTORS` (activation_clustering, spectral_signatures, frequency)."""
    detector_params: dict[str, Any] = field(default_factory=dict)
    warmup_epochs: int = 5
    poisoned_by: dict[str, Any] = field(default_factory=dict)
    """Optional ``{behaviour = NAME, params = {...}}``: a data-level attack applied to this client's data first."""

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise _bad("detector", self.detector, f"one of {DETECTORS.names()}")
        if DETECTORS.get(self.detector).kind != "data":
            data_names = [n for n in DETECTORS.names() if DETECTORS.get(n).kind == "data"]
            raise _bad("detector", self.detector, f"a data detector: one of {data_names}")
        if not isinstance(self.detector_params, dict):
            raise _bad("detector_params", self.detector_params, "a table of detector parameters")
        try:
            DETECTORS.get(self.detector)(**self.detector_params)
        except (TypeError, ValueError) as e:
            raise ValueError(f"sanitizing.detector_params: {e}") from None
        if not (is_int(self.warmup_epochs) and self.warmup_epochs >= 0):
            raise _bad("warmup_epochs", self.warmup_epochs, "an integer >= 0")
        if self.poisoned_by:
            inner = self._inner()
            if not type(inner).overridden_stages() <= {"prepare", "poison_batch"}:
                raise _bad("poisoned_by", self.poisoned_by.get("behaviour"),
                           "a data-level behaviour (one that overrides only prepare / poison_batch)")

    def _inner(self) -> Behaviour:
        spec = self.poisoned_by
        if set(spec) - {"behaviour", "params"} or "behaviour" not in spec:
            raise _bad("poisoned_by", spec, "{behaviour = NAME, params = {...}}")
        if spec["behaviour"] not in BEHAVIOURS or spec["behaviour"] == "sanitizing":
            raise _bad("poisoned_by.behaviour", spec["behaviour"], f"one of {BEHAVIOURS.names()}")
        try:
            return BEHAVIOURS.get(spec["behaviour"]).from_params(spec.get("params", {}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"sanitizing.poisoned_by.params: {e}") from None

    @classmethod
    def vectorizable(cls) -> bool:
        return False  # prepare trains a model: not a plain data rewrite

    def prepare(self, task: ClientTask) -> None:
        poisoned = None
        if self.poisoned_by:
            clean = task.data
            inner = self._inner()
            inner.prepare(task)
            x, y = inner.poison_batch(task.data.x, task.data.y, task)
            task.data = TensorData(x, y)
            if len(x) == len(clean):
                poisoned = (x != clean.x).flatten(1).any(1) | (y != clean.y)
        model = copy.deepcopy(task.model)
        if self.warmup_epochs:
            c = task.config
            sgd_train(model, task.data, epochs=self.warmup_epochs, batch_size=c.batch_size, lr=c.lr,
                      momentum=c.momentum, weight_decay=c.weight_decay, generator=task.generator,
                      device=task.device)
        det = DETECTORS.get(self.detector)(**self.detector_params)
        res = det.audit(AuditTarget(model=model.eval(), clean=task.data, data=task.data, poisoned=poisoned,
                                    num_classes=task.num_classes, in_shape=tuple(task.in_shape),
                                    generator=task.generator, device=task.device))
        keep = torch.ones(len(task.data), dtype=torch.bool)
        keep[res.figures["removed"]] = False
        task.data = task.data.subset(keep.nonzero().flatten())
        task.metrics["sanitized_removed"] = float(res.figures["n_removed"])
        if poisoned is not None:
            for k in ("recall", "clean_removed"):
                v = res.figures.get(k)
                task.metrics[f"sanitized_{k}"] = float("nan") if v is None else float(v)

    def eval_triggers(self, coalition: tuple[int, ...]) -> dict[str, EvalTrigger]:
        return self._inner().eval_triggers(coalition) if self.poisoned_by else {}


__all__ = ["Sanitizing"]

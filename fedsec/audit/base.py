"""The audit contract: the detector registry, what a detector sees, its verdict.

A detector is a frozen keyword-only dataclass registered in :data:`DETECTORS`
(its fields are its hyperparameters, validated in ``__post_init__``; unknown
keys are errors naming the valid ones). ``detector.audit(target)`` reads an
:class:`AuditTarget` and returns an :class:`AuditResult`: ``flagged``,
``score``, the suspected ``target`` class when the method has one, and the
``figures`` behind the verdict, all JSON-serialisable.

Two kinds (``Detector.kind``):

``"model"``
    analyse the model itself with a small clean set (``target.clean``): what a
    server holds (Neural Cleanse, fine-pruning).
``"data"``
    analyse a labelled data set (``target.data``) with a model trained on it:
    a client auditing its own data, a data owner auditing a data set
    (activation clustering, spectral signatures, the frequency detector).
    Their figures carry ``removed`` (indices into ``target.data`` they would
    drop) and, when ``target.poisoned`` gives the ground truth, ``recall`` (of
    the poisons) and ``clean_removed`` (fraction of clean samples dropped).

Randomness comes from ``target.generator`` only.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fedsec.data import TensorData
from fedsec.metrics import EvalTrigger
from fedsec.registry import Registry

DETECTORS: Registry = Registry("audit detector")
KINDS = ("model", "data")


def register_detector(name: str):
    """Register a :class:`Detector` subclass under ``name`` (sets ``cls.name``)."""
    inner = DETECTORS.register(name)

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Detector)):
            raise TypeError(f"detector {name!r} must be a subclass of fedsec.audit.Detector")
        # its own decorator, not one inherited from Detector: its fields must be declared
        if "__dataclass_params__" not in cls.__dict__ or not cls.__dataclass_params__.frozen:
            raise TypeError(f"detector {name!r} must be a @dataclass(frozen=True, kw_only=True)")
        if cls.kind not in KINDS:
            raise TypeError(f"detector {name!r}: kind {cls.kind!r} is not one of {KINDS}")
        cls.name = name
        return inner(cls)

    return deco


def get_detector(name: str, **params: Any) -> Detector:
    """``DETECTORS.get(name)(**params)``: unknown name or parameter is an error."""
    return DETECTORS.get(name)(**params)


# --------------------------------------------------------------------------------------
# parameter checks


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def reject_unknown(cls: type, args: tuple, kwargs: dict[str, Any], owner: str) -> None:
    """A dataclass's constructor arguments: keywords only, each one of its init fields."""
    if args:
        raise TypeError(f"{owner} takes keyword arguments only, got {len(args)} positional")
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    for k in kwargs:
        if k not in valid:
            close = difflib.get_close_matches(k, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"{owner}: unknown parameter {k!r}{hint}; valid: {', '.join(valid) or 'none'}")


def check(cond: bool, owner: str, name: str, value: Any, expected: str) -> None:
    """Raise ``ValueError("owner.name: got value, expected ...")`` unless ``cond``."""
    from fedsec.validation import check as _check

    _check(cond, f"{owner}.{name}", value, expected)


# --------------------------------------------------------------------------------------
# the verdict


def _plain(o: Any) -> Any:
    """A JSON value: tensors to lists, non-finite floats to None, tuples to lists."""
    if isinstance(o, torch.Tensor):
        return _plain(o.detach().cpu().tolist())
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, bool) or o is None or isinstance(o, str):
        return o
    if isinstance(o, int):
        return int(o)
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if hasattr(o, "item") and callable(o.item):  # numpy scalars
        return _plain(o.item())
    if isinstance(o, Mapping):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    raise TypeError(f"figures: {type(o).__name__} is not JSON-serialisable")


@dataclass(frozen=True)
class AuditResult:
    """A detector's verdict.

    ``flagged``: the model (or data) is judged backdoored/poisoned;
    ``score``: the statistic the verdict thresholds (the detector's docstring
    says which; higher = more suspect); ``target``: the suspected target
    class, or None; ``figures``: the numbers behind it (plain JSON values,
    converted on construction).
    """

    flagged: bool
    score: float
    target: int | None = None
    figures: dict[str, Any] = field(default_factory=dict)
    detector: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.flagged, bool):
            raise TypeError(f"AuditResult.flagged: got {self.flagged!r}, expected True or False")
        if not isinstance(self.score, (int, float)) or isinstance(self.score, bool):
            raise TypeError(f"AuditResult.score: got {self.score!r}, expected a number")
        object.__setattr__(self, "score", float(self.score))
        if self.target is not None and not (is_int(self.target) and self.target >= 0):
            raise TypeError(f"AuditResult.target: got {self.target!r}, expected a class index >= 0 or None")
        if not isinstance(self.figures, Mapping):
            raise TypeError(f"AuditResult.figures: got {type(self.figures).__name__}, expected a dict")
        object.__setattr__(self, "figures", _plain(self.figures))

    def to_dict(self) -> dict[str, Any]:
        return {"detector": self.detector, "flagged": self.flagged,
                "score": _plain(self.score), "target": self.target, "figures": self.figures}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


# --------------------------------------------------------------------------------------
# what a detector sees


@dataclass(frozen=True, kw_only=True)
class AuditTarget:
    """Everything a detector may read.

    ``model``: the audited model (never modified: detectors work on copies);
    ``clean``: a small clean labelled set (the server's held-out part of the
    test split; a model detector's only data); ``data``: the audited data set
    (data detectors); ``poisoned``: (len(data),) bool ground truth, for the
    recall / clean-removal figures only, never for the decision;
    ``evaluation``: a disjoint labelled set on which accuracy and ASR are
    reported (falls back to ``clean``); ``eval_triggers``: triggers whose ASR
    is reported (evaluation only); ``out_dir`` / ``prefix``: where images go
    (None: no files).
    """

    model: nn.Module
    clean: TensorData
    num_classes: int
    in_shape: tuple[int, int, int]
    generator: torch.Generator
    device: torch.device = torch.device("cpu")
    data: TensorData | None = None
    poisoned: torch.Tensor | None = None
    evaluation: TensorData | None = None
    eval_triggers: Mapping[str, EvalTrigger] = field(default_factory=dict)
    out_dir: Path | None = None
    prefix: str = ""
    make_model: Callable[[], nn.Module] | None = None

    def __post_init__(self) -> None:
        if self.data is not None and self.poisoned is not None and len(self.poisoned) != len(self.data):
            raise ValueError(f"AuditTarget.poisoned: {len(self.poisoned)} flags for {len(self.data)} samples")
        if self.num_classes < 2:
            raise ValueError(f"AuditTarget.num_classes: got {self.num_classes!r}, expected >= 2")

    @property
    def eval_set(self) -> TensorData:
        return self.evaluation if self.evaluation is not None else self.clean

    def file(self, name: str) -> Path | None:
        if self.out_dir is None:
            return None
        return Path(self.out_dir) / f"{self.prefix}{name}"


@dataclass(frozen=True, kw_only=True)
class Detector:
    """Base of every detector: keyword-only, frozen, unknown keys rejected."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "model"

    def __new__(cls, *args: Any, **kwargs: Any) -> Detector:
        reject_unknown(cls, args, kwargs, cls.name or cls.__name__)
        return super().__new__(cls)

    def audit(self, target: AuditTarget) -> AuditResult:
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The hyperparameters as a JSON-able dict (for the figures)."""
        return _plain({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init})

    def _check(self, cond: bool, name: str, value: Any, expected: str) -> None:
        check(cond, self.name or type(self).__name__, name, value, expected)

    def _require_data(self, target: AuditTarget) -> TensorData:
        if target.data is None or len(target.data) == 0:
            raise ValueError(f"{self.name}: a data detector needs the audited data (AuditTarget.data); "
                             "from the command line give --data SCENARIO_OR_RUN")
        return target.data


def removal_figures(removed: torch.Tensor, poisoned: torch.Tensor | None) -> dict[str, Any]:
    """``removed``: (N,) bool. Recall of the poisons and fraction of clean samples removed."""
    out: dict[str, Any] = {"removed": removed.nonzero().flatten().tolist(), "n_removed": int(removed.sum()),
                           "n": int(len(removed))}
    if poisoned is not None:
        poisoned = poisoned.to(torch.bool).cpu()
        removed = removed.cpu()
        n_bad, n_clean = int(poisoned.sum()), int((~poisoned).sum())
        out["n_poisoned"] = n_bad
        out["recall"] = float((removed & poisoned).sum()) / n_bad if n_bad else float("nan")
        out["clean_removed"] = float((removed & ~poisoned).sum()) / n_clean if n_clean else float("nan")
        out["precision"] = float((removed & poisoned).sum()) / int(removed.sum()) if bool(removed.any()) \
            else float("nan")
    return out


def seed_from(generator: torch.Generator) -> int:
    """An int seed for a library that takes one (scikit-learn), drawn from ``generator``."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))

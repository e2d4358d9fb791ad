"""The figures of one model (teacher or student) in ABD's results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fedsec.data import TensorData
from fedsec.metrics import EvalTrigger, accuracy, attack_success_rate


def evaluate(model: nn.Module, test: TensorData | None, triggers: Mapping[str, EvalTrigger] | None) -> dict[str, Any]:
    """``acc``, ``asr`` per trigger and ``target_acc``: clean accuracy on the test
    images of each all-to-one trigger's target class (fractions in [0, 1]). A
    student that never predicts the target class has 0% ASR for that reason
    alone; ``target_acc`` shows it. Empty without a test set."""
    out: dict[str, Any] = {}
    if test is None:
        return out
    triggers = triggers or {}
    out["acc"] = accuracy(model, test)
    out["asr"] = {name: attack_success_rate(model, test, t) for name, t in triggers.items()}
    out["target_acc"] = {}
    for name, t in triggers.items():
        if t.target is not None and bool((test.y == t.target).any()):
            out["target_acc"][name] = accuracy(model, test.subset(torch.nonzero(test.y == t.target).flatten()))
    return out

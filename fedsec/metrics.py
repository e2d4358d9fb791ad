"""Centralized evaluation: clean accuracy, attack success rate, detection scores."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from fedsec.data import TensorData


@dataclass(frozen=True)
class EvalTrigger:
    """A trigger to measure ASR with: ``apply`` maps a batch (B, C, H, W) to its triggered copy.

    ``target`` is the attacker's class for all-to-one attacks; ``target_fn``
    (label -> target label) covers all-to-all attacks.
    """

    apply: Callable[[torch.Tensor], torch.Tensor]
    target: int | None = None
    target_fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def targets(self, y: torch.Tensor) -> torch.Tensor:
        if self.target_fn is not None:
            return self.target_fn(y)
        return torch.full_like(y, int(self.target))  # type: ignore[arg-type]


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """(N, K) float32 logits on CPU, in eval mode; the model's train/eval mode is restored."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = [model(x[i : i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    out = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, data: TensorData) -> float:
    return float((predict(model, data.x) == data.y).float().mean())


def attack_success_rate(model: nn.Module, data: TensorData, trigger: EvalTrigger) -> float:
    """Fraction of test samples not already of the target class that the model
    assigns to the target once triggered (BadNets / DBA convention)."""
    tgt = trigger.targets(data.y)
    keep = data.y != tgt
    if not bool(keep.any()):
        return float("nan")
    pred = predict(model, trigger.apply(data.x[keep].clone()))
    return float((pred == tgt[keep]).float().mean())


def detection(accepted: Iterable[int], sampled: Iterable[int], malicious: Iterable[int]) -> dict[str, float]:
    """Precision/recall/FPR of the rule's rejections against the ground truth.

    Positive = rejected by the rule; relevant = actually malicious (among the sampled).
    Precision is NaN when nothing was rejected, recall NaN when nobody attacked.
    """
    sampled = set(sampled)
    rejected = sampled - set(accepted)
    bad = set(malicious) & sampled
    tp = len(rejected & bad)
    fp = len(rejected - bad)
    nan = float("nan")
    return {
        "precision": tp / len(rejected) if rejected else nan,
        "recall": tp / len(bad) if bad else nan,
        "fpr": fp / len(sampled - bad) if sampled - bad else nan,
    }


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, num_classes: int, batch_size: int = 1024) -> dict:
    """Clean accuracy, mean cross-entropy and per-class accuracy in one pass over ``data``.

    ``per_class_accuracy[c]`` is NaN for a class absent from ``data``; the
    class-count-weighted mean of the per-class accuracies is ``accuracy``.
    """
    model.eval()
    device = next(model.parameters()).device
    correct = torch.zeros(num_classes, dtype=torch.float64)
    count = torch.zeros(num_classes, dtype=torch.float64)
    loss_sum = 0.0
    for i in range(0, len(data), batch_size):
        x, y = data.x[i : i + batch_size].to(device), data.y[i : i + batch_size]
        logits = model(x).float().cpu()
        loss_sum += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
        hit = (logits.argmax(1) == y).double()
        correct.index_add_(0, y, hit)
        count.index_add_(0, y, torch.ones_like(hit))
    n = float(count.sum())
    per_class = torch.where(count > 0, correct / count.clamp(min=1), torch.full_like(count, float("nan")))
    return {
        "accuracy": float(correct.sum()) / n if n else float("nan"),
        "loss": loss_sum / n if n else float("nan"),
        "per_class_accuracy": per_class.tolist(),
    }


def asr_lifespan(rounds: list[int], asr: list[float], attack_rounds: Iterable[int]) -> int | str | None:
    """Rounds after the last attacking round until ASR falls below half its peak.

    Durability of a backdoor (Neurotoxin, Zhang et al. ICML 2022, measure it this
    way). ``rounds``/``asr`` are the per-round series (NaN entries are skipped),
    ``attack_rounds`` the rounds in which an attacker took part. The peak is the
    highest ASR from the first to the last attacking round: rounds before the
    attack are left out, because a barely trained model that predicts one class
    for every input scores an ASR near 1 there when that class is the target.
    Returns ``r - last`` for the first round r after the last attacking round
    whose ASR is below half the peak (1: it fell in the first clean round);
    ``"still above"`` when the run ends first; 0 when the peak is 0 (no
    backdoor took hold); None when no attack ran or no ASR was measured in the
    attack window.
    """
    attack = set(attack_rounds)
    attacked = [r for r in rounds if r in attack]
    if not attacked:
        return None
    first, last = min(attacked), max(attacked)
    series = [(r, a) for r, a in zip(rounds, asr) if a == a]
    window = [a for r, a in series if first <= r <= last]
    if not window:
        return None
    peak = max(window)
    if peak <= 0:
        return 0
    for r, a in series:
        if r > last and a < peak / 2:
            return r - last
    return "still above"

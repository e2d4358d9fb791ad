"""Neural Cleanse: reverse-engineer the smallest trigger of every class, flag an outlier.

Wang, Yao, Shan, Li, Viswanath, Zheng, Zhao. "Neural Cleanse: Identifying and
Mitigating Backdoor Attacks in Neural Networks." IEEE S&P 2019. Reference code
github.com/bolunwang/backdoor (``visualizer.py``, ``mad_outlier_detection.py``;
read, not copied).

For every label y_t the defender solves (Sec. IV-B, Eq. 2-3)

    min_{m, Delta}  CE(f(A(x, m, Delta)), y_t) + lambda * |m|_1,
    A(x, m, Delta) = (1 - m) * x + m * Delta

over a small clean set, with a single-channel mask ``m`` (H, W) in [0, 1]
(broadcast over the colour channels) and a pattern ``Delta`` (C, H, W) in the
image range, both parametrised through ``tanh(.) / (2 - eps) + 0.5`` and
optimised with Adam (lr 0.1, betas (0.5, 0.9)) as in the reference. The cost
``lambda`` follows the reference's schedule: it starts at 0; after
``patience`` passes in which the reversed trigger reaches ``attack_success``
(0.99) it is set to ``init_cost`` (1e-3); from then on it is multiplied by
``cost_multiplier`` after ``patience`` successful passes and divided by
``cost_multiplier ** 1.5`` after ``patience`` failing ones. The kept trigger
is the one with the smallest |m|_1 among passes that reached the success
rate. The search stops early once the cost has moved both ways and |m|_1 has
not improved for ``early_stop_patience`` passes.

Outlier detection (Sec. IV-C): with the L1 norms of the C masks, their median
and MAD (consistency constant 1.4826), the anomaly index of class c is
``(median - |m_c|_1) / MAD``; the model is flagged when the smallest class's
index exceeds ``threshold`` (2: > 95% probability of being an outlier under a
normal model), and that class is the suspected target. Only classes below the
median count (the reference ignores large norms).

``score`` is that anomaly index. The figures give every class's norm and
index, the classes above the threshold, and the reversed triggers' own
success rates; the triggers are drawn to ``<prefix>neural_cleanse.png``
(mask and mask * pattern per class) when the target has an ``out_dir``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedsec.audit.base import AuditResult, AuditTarget, Detector, is_int, is_num, register_detector
from fedsec.audit.stats import anomaly_index, mad, median

TANH_EPS = 1e-7
"""The reference's ``K.epsilon()``: keeps ``arctanh`` of the initial 0/1 values finite."""


def from_tanh(w: torch.Tensor) -> torch.Tensor:
    """Unconstrained parameters -> values in (0, 1)."""
    return torch.tanh(w) / (2 - TANH_EPS) + 0.5


def to_tanh(v: torch.Tensor) -> torch.Tensor:
    """Values in [0, 1] -> the unconstrained parameters :func:`from_tanh` maps back to them."""
    return torch.atanh((v.clamp(0, 1) - 0.5) * (2 - TANH_EPS))


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """A(x, m, Delta) = (1 - m) x + m Delta; x (B, C, H, W), mask (H, W), pattern (C, H, W)."""
    return (1 - mask) * x + mask * pattern


@dataclass
class _Schedule:
    """The reference's cost (lambda) controller and early stop, one pass at a time."""

    init_cost: float
    up: float
    down: float
    patience: int
    early_stop_patience: int
    cost: float = 0.0
    set_counter: int = 0
    up_counter: int = 0
    down_counter: int = 0
    up_flag: bool = False
    down_flag: bool = False
    stop_counter: int = 0
    stop_best: float = math.inf

    def step(self, success: bool, reg_best: float) -> bool:
        """Update after one pass; True = stop."""
        if reg_best < math.inf:
            self.stop_counter = self.stop_counter + 1 if reg_best >= self.stop_best else 0
        self.stop_best = min(reg_best, self.stop_best)
        if self.up_flag and self.down_flag and self.stop_counter >= self.early_stop_patience:
            return True
        if self.cost == 0 and success:
            self.set_counter += 1
            if self.set_counter >= self.patience:
                self.cost = self.init_cost
                self.up_counter = self.down_counter = 0
                self.up_flag = self.down_flag = False
        else:
            self.set_counter = 0
        if success:
            self.up_counter, self.down_counter = self.up_counter + 1, 0
        else:
            self.up_counter, self.down_counter = 0, self.down_counter + 1
        if self.up_counter >= self.patience:
            self.up_counter = 0
            self.cost *= self.up
            self.up_flag = True
        elif self.down_counter >= self.patience:
            self.down_counter = 0
            self.cost /= self.down
            self.down_flag = True
        return False


@register_detector("neural_cleanse")
@dataclass(frozen=True, kw_only=True)
class NeuralCleanse(Detector):
    """Neural Cleanse (Wang et al. S&P 2019): per-class minimal trigger, MAD outlier test."""

    kind = "model"

    passes: int = 60
    """Optimisation passes over the clean set per class (the reference's ``steps``)."""
    batch_size: int = 32
    lr: float = 0.1
    init_cost: float = 1e-3
    """lambda once the reversed trigger first succeeds (the reference's ``INIT_COST``)."""
    cost_multiplier: float = 2.0
    patience: int = 5
    early_stop_patience: int = 25
    attack_success: float = 0.99
    threshold: float = 2.0
    """Anomaly index above which the smallest-norm class is an outlier (the paper's 2)."""
    max_samples: int = 0
    """Use at most this many clean samples (0 = all of ``target.clean``)."""

    def __post_init__(self) -> None:
        for f, lo in (("passes", 1), ("batch_size", 1), ("patience", 1), ("early_stop_patience", 1)):
            v = getattr(self, f)
            self._check(is_int(v) and v >= lo, f, v, f"an integer >= {lo}")
        self._check(is_int(self.max_samples) and self.max_samples >= 0, "max_samples", self.max_samples,
                    "an integer >= 0 (0 = all)")
        for f in ("lr", "init_cost"):
            v = getattr(self, f)
            self._check(is_num(v) and v > 0, f, v, "a number > 0")
        self._check(is_num(self.cost_multiplier) and self.cost_multiplier > 1, "cost_multiplier",
                    self.cost_multiplier, "a number > 1")
        self._check(is_num(self.attack_success) and 0 < self.attack_success <= 1, "attack_success",
                    self.attack_success, "a number in (0, 1]")
        self._check(is_num(self.threshold) and self.threshold > 0, "threshold", self.threshold, "a number > 0")

    # -- one class ---------------------------------------------------------------------------
    def reverse(self, model: nn.Module, x: torch.Tensor, label: int, generator: torch.Generator,
                device: torch.device) -> dict[str, Any]:
        """The smallest trigger that sends ``x`` (N, C, H, W) to ``label``.

        Returns ``{"mask": (H, W), "pattern": (C, H, W), "l1", "success", "passes",
        "reached"}`` (tensors on CPU); ``model`` must be in eval mode with frozen weights.
        """
        _, c, h, w = x.shape
        mask_w = to_tanh(torch.rand(h, w, generator=generator)).to(device).requires_grad_(True)
        pat_w = to_tanh(torch.rand(c, h, w, generator=generator)).to(device).requires_grad_(True)
        opt = torch.optim.Adam([mask_w, pat_w], lr=self.lr, betas=(0.5, 0.9))
        sched = _Schedule(init_cost=self.init_cost, up=self.cost_multiplier, down=self.cost_multiplier ** 1.5,
                          patience=self.patience, early_stop_patience=self.early_stop_patience)
        best: tuple[float, torch.Tensor, torch.Tensor, float] | None = None
        n = len(x)
        done = 0
        for done in range(1, self.passes + 1):
            order = torch.randperm(n, generator=generator)
            hits, reg_sum, seen = 0, 0.0, 0
            for start in range(0, n, self.batch_size):
                xb = x[order[start : start + self.batch_size]].to(device)
                mask, pattern = from_tanh(mask_w), from_tanh(pat_w)
                out = model(stamp(xb, mask, pattern))
                yt = torch.full((len(xb),), label, dtype=torch.long, device=device)
                reg = mask.abs().sum()
                loss = F.cross_entropy(out, yt) + sched.cost * reg
                g = torch.autograd.grad(loss, [mask_w, pat_w])  # never touches the model's .grad
                opt.zero_grad(set_to_none=True)
                mask_w.grad, pat_w.grad = g
                opt.step()
                hits += int((out.argmax(1) == yt).sum())
                reg_sum += float(reg.detach()) * len(xb)
                seen += len(xb)
            success_rate, reg_mean = hits / seen, reg_sum / seen
            success = success_rate >= self.attack_success
            if success and (best is None or reg_mean < best[0]):
                with torch.no_grad():
                    best = (reg_mean, from_tanh(mask_w).cpu(), from_tanh(pat_w).cpu(), success_rate)
            if sched.step(success, best[0] if best is not None else math.inf):
                break
        reached = best is not None
        if best is None:  # never reached the success rate: report the last trigger (as the reference)
            with torch.no_grad():
                best = (float(from_tanh(mask_w).sum()), from_tanh(mask_w).cpu(), from_tanh(pat_w).cpu(),
                        success_rate)
        _, mask, pattern, rate = best
        return {"mask": mask, "pattern": pattern, "l1": float(mask.abs().sum()), "success": rate,
                "passes": done, "reached": reached}

    # -- the audit -----------------------------------------------------------------------------
    def audit(self, target: AuditTarget) -> AuditResult:
        model = copy.deepcopy(target.model).to(target.device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        x = target.clean.x
        if self.max_samples and len(x) > self.max_samples:
            x = x[torch.randperm(len(x), generator=target.generator)[: self.max_samples]]
        if len(x) == 0:
            raise ValueError("neural_cleanse: the clean set is empty")
        per_class = [self.reverse(model, x, c, target.generator, target.device) for c in range(target.num_classes)]
        norms = torch.tensor([r["l1"] for r in per_class], dtype=torch.float64)
        index = anomaly_index(norms, side="low")
        suspect = int(torch.argmin(norms))
        score = float(index[suspect])
        flagged_classes = [c for c in range(target.num_classes) if float(index[c]) > self.threshold]
        figures: dict[str, Any] = {
            "l1_norms": norms.tolist(),
            "anomaly_index_per_class": index.tolist(),
            "anomaly_index": score,
            "median": float(median(norms)),
            "mad": float(mad(norms)),
            "flagged_classes": flagged_classes,
            "threshold": self.threshold,
            "reversed_success": [r["success"] for r in per_class],
            "reached": [r["reached"] for r in per_class],
            "passes": [r["passes"] for r in per_class],
            "n_clean": len(x),
            "params": self.params(),
        }
        path = target.file("neural_cleanse.png")
        if path is not None:
            draw_triggers(path, per_class, norms.tolist(), index.tolist(), suspect, score > self.threshold)
            figures["image"] = path.name
        return AuditResult(flagged=score > self.threshold, score=score,
                           target=suspect if score > self.threshold else None, figures=figures,
                           detector=self.name)


def draw_triggers(path, per_class: list[dict[str, Any]], norms: list[float], index: list[float],
                  suspect: int, flagged: bool) -> None:
    """One labelled figure: per class the reversed mask and mask * pattern."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fedsec.results import atomic_write

    k = len(per_class)
    fig, axes = plt.subplots(2, k, figsize=(1.3 * k, 3.2), squeeze=False)
    for c, r in enumerate(per_class):
        fused = (r["mask"] * r["pattern"]).permute(1, 2, 0)
        fused = fused[..., 0] if fused.shape[-1] == 1 else fused
        axes[0][c].imshow(r["mask"].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[1][c].imshow(fused.numpy(), cmap="gray" if fused.ndim == 2 else None, vmin=0, vmax=1,
                          interpolation="nearest")
        colour = "red" if (flagged and c == suspect) else "black"
        axes[0][c].set_title(f"class {c}\nL1 {norms[c]:.1f}\nidx {index[c]:.2f}", fontsize=7, color=colour)
        for a in (axes[0][c], axes[1][c]):
            a.set_xticks([])
            a.set_yticks([])
    axes[0][0].set_ylabel("mask m", fontsize=8)
    axes[1][0].set_ylabel("m * pattern", fontsize=8)
    verdict = f"flagged: target {suspect}" if flagged else "not flagged"
    fig.suptitle(f"Neural Cleanse reversed triggers ({verdict}; anomaly index of class {suspect}: "
                 f"{index[suspect]:.2f})", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


__all__ = ["NeuralCleanse", "from_tanh", "to_tanh", "stamp", "draw_triggers"]

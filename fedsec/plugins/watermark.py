"""Post-training ownership watermark from a single OoD image (server plugin ``watermark``).

Method: Yu, Hong, Zhang, Wang, Wang & Zhou, "Safe and Robust Watermark
Injection with a Single OoD Image", ICLR 2024 (arXiv 2309.01786); reference
code github.com/illidanlab/Single_oodwatermark (read, not copied).

The server never sees the clients' data. It builds a surrogate set of many
augmented patches of one out-of-distribution image
(:func:`fedsec.data.surrogate.surrogate_patches`), stamps a trigger on a
fraction of them (``poison_ratio``, 10 %) labelled ``target``, keeps the
global model's own (temperature-softened) predictions as soft labels on the
rest, and fine-tunes the global model on that set with a small learning rate.

Robustness comes from *adversarially perturbed fine-tuning* (the paper's
Eq. 3-5)::

    min_w  max_{||v_l|| <= gamma ||w_l||}  L_inj(w + v) + beta * KL(f_{w+v}(x_c) || f_{w+v}(T(x_p)))

alternating a v-step (normalised, layer-wise scaled gradient *ascent* on
``v``, projected back onto the per-layer gamma ball; :func:`project_gamma_ball`)
and a w-step (SGD on ``L_inj`` evaluated at ``w + v``, applied to ``w``).
As in the reference code (``utils_awp.TradesAWP``): only weight tensors with
``dim > 1`` (conv / linear kernels) are perturbed, ``v`` is re-drawn from 0
for every batch, the KL consistency term between clean and triggered surrogate
outputs enters the adversary's (v-step) objective only, the w-step minimises
``L_inj`` = cross-entropy with temperature 0.5, and perturbation runs only in
the first ``perturb_epochs`` epochs. ``perturb=False`` gives plain fine-tuning
(the ablation).

Choice of gamma (``gamma="auto"``, the default): the paper's gamma = 0.1 is for
WRN-16-2 / ResNet-18 (0.69 M / 11 M kernel weights). Small models collapse at
0.1: on the 38 k-weight 8x8 digits CNN the victim falls to 0.08 accuracy; how
much a small model tolerates also depends on how well it is trained (30 epochs
on a well-trained CNN: 0.05 is still harmless; 12 epochs on a less-trained
one: 0.028 already costs 5-15 points, 0.015 costs <= 0.6). ``auto`` therefore
shrinks gamma with the number ``P`` of perturbed kernel weights::

    gamma = max(0.01, 0.1 * min(1, P / 5e5) ** 0.75)

i.e. 0.1 for WRN-16-2 and larger, 0.045 for WRN-16-1, 0.0145 for the digits
CNN (measurements: experiments/plugins/watermark.md and the plugin's report).

Verification (on half of the test split; the other half is the attacker's):

- ID WSR: triggered test images whose label is not ``target``, fraction
  classified as ``target``; OoD WSR: the same on a fresh draw of triggered
  surrogate patches (no exclusion, as the reference code).
- ``p_ttest``: the reference code's test (``t_test.py``): Welch t-test per
  class between the suspect's and the un-watermarked original's logits on
  triggered OoD patches, p-values averaged over classes. It tests "differs
  from the original", not "carries the watermark": an independently trained
  model also gets a tiny p-value (see the negative control).
- ``p_value`` (``p_paired``): one-sided paired t-test that
  P(target | x + trigger) > P(target | x) on the ID verification images, on
  the suspect alone. This is the ownership test the table reports.
- Negative control: a model trained from scratch by the plugin on the
  attacker half (never watermarked): its p-values should stay high.
- Removal attacks with the attacker half: FT-AL, FT-LL, RT-AL (re-initialise
  the last layer, retrain all), magnitude pruning 20 % / 50 % (per layer,
  unstructured, no fine-tuning).

``at="end"`` injects once in ``on_run_end`` (the hook can not replace the final
model, so the watermarked one is written to ``<run_dir>/watermarked.safetensors``
next to the table ``watermark.md``); ``at="every_round"`` re-embeds in
``on_round_end`` from ``from_round`` on (WAFFLE-style; the returned model is
what the next round sends) and ``on_run_end`` only verifies, with the global
model before the first injection as the un-watermarked original. Deviation from the reference code: BatchNorm layers stay in eval
mode while fine-tuning (running statistics are not overwritten by OoD
patches).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsec.data import TensorData
from fedsec.plugins import Plugin, PluginContext, register_plugin
from fedsec.seeding import derive_seed, generator, scoped_seed
from fedsec.training import sgd_train

TRIGGERS = ("patch", "blend")
ATTACKS = ("FT-AL", "FT-LL", "RT-AL", "Pruning-20%", "Pruning-50%")

# --------------------------------------------------------------------------------------
# triggers (the watermark's own; independent of fedsec.data.triggers)


def trojan_square(size: int, channels: int) -> torch.Tensor:
    """A fixed (C, size, size) square pattern: a checkerboard with a bright frame.

    Deterministic, high contrast in every channel (trojan-square style).
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    i = torch.arange(size)
    pat = ((i[:, None] + i[None, :]) % 2 == 0).float()
    pat[0, :] = pat[-1, :] = pat[:, 0] = pat[:, -1] = 1.0
    return pat.expand(channels, size, size).clone()


def apply_patch(x: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Stamp ``pattern`` (C, s, s) on the bottom-right corner of a batch (B, C, H, W); new tensor."""
    out = x.clone()
    s = pattern.shape[-1]
    out[..., -s:, -s:] = pattern.to(out)
    return out


def blend_pattern(in_shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """A fixed uniform-noise image (C, H, W) in [0, 1] to blend in (seeded)."""
    g = generator(seed, "watermark", "blend-pattern")
    return torch.rand(tuple(in_shape), generator=g)


def apply_blend(x: torch.Tensor, pattern: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) x + alpha pattern`` (Chen et al. 2017 blended trigger); new tensor."""
    return (1 - alpha) * x + alpha * pattern.to(x)


# --------------------------------------------------------------------------------------
# weight perturbation


def perturbed_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The tensors the adversary perturbs: conv / linear kernels (``dim > 1``)."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() > 1]


def project_gamma_ball(
    v: Sequence[torch.Tensor], w: Sequence[torch.Tensor], gamma: float
) -> list[torch.Tensor]:
    """Layer-wise projection Pi_gamma: ``v_l * min(1, gamma ||w_l|| / ||v_l||)``.

    Returns new tensors; a ``v_l`` inside its ball comes back unchanged.
    """
    if len(v) != len(w):
        raise ValueError(f"v and w must have as many layers, got {len(v)} and {len(w)}")
    out = []
    for vl, wl in zip(v, w):
        radius = gamma * float(wl.detach().norm())
        norm = float(vl.detach().norm())
        out.append(vl.detach() * (radius / norm) if norm > radius else vl.detach().clone())
    return out


def auto_gamma(model: nn.Module) -> float:
    """The paper's 0.1 for >= 0.5 M perturbed weights (WRN-16-2), shrunk as size**0.75 below."""
    n = sum(p.numel() for p in perturbed_parameters(model))
    return max(0.01, 0.1 * min(1.0, n / 5e5) ** 0.75)


def _soft_ce(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    return -(soft * F.log_softmax(logits, dim=1)).sum(1).mean()


def _consistency_kl(logits: torch.Tensor, poisoned: torch.Tensor) -> torch.Tensor:
    """KL(f(x_clean) || f(T(x_poisoned))) over pairs of clean / triggered samples of a batch."""
    lp, lc = logits[poisoned], logits[~poisoned]
    m = min(len(lp), len(lc))
    if m == 0:
        return logits.new_zeros(())
    return F.kl_div(F.log_softmax(lp[:m], 1), F.softmax(lc[:m], 1), reduction="batchmean")


@torch.no_grad()
def _add(params: Sequence[torch.Tensor], deltas: Sequence[torch.Tensor], sign: float = 1.0) -> None:
    for p, d in zip(params, deltas):
        p.add_(d, alpha=sign)


def _freeze_norm_stats(model: nn.Module) -> None:
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) or isinstance(m, nn.Dropout):
            m.eval()


# --------------------------------------------------------------------------------------
# model helpers


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = [model(x[i : i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.empty(0)


def last_linear(model: nn.Module) -> nn.Linear:
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not lin:
        raise ValueError("model has no nn.Linear layer to treat as the last layer")
    return lin[-1]


def train_supervised(
    model: nn.Module,
    data: TensorData,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    params: Sequence[nn.Parameter] | None = None,
    seed: int = 0,
    key: str = "train",
) -> nn.Module:
    """Plain SGD cross-entropy training in place (the attacker's and the control's loop)."""
    sgd_train(model, data, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
              weight_decay=weight_decay, generator=generator(seed, "watermark", key),
              device=next(model.parameters()).device, params=params)
    return model.eval()


@torch.no_grad()
def magnitude_prune(model: nn.Module, amount: float) -> nn.Module:
    """Zero the ``amount`` fraction of smallest-magnitude entries of every conv / linear kernel (in place)."""
    for p in perturbed_parameters(model):
        k = int(round(amount * p.numel()))
        if k < 1:
            continue
        thr = p.abs().flatten().kthvalue(k).values
        p.mul_((p.abs() > thr).to(p.dtype))
    return model


# --------------------------------------------------------------------------------------
# the plugin


def _bad(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"watermark.{name}: got {value!r}, expected {expected}")


@register_plugin("watermark")
@dataclass(frozen=True, kw_only=True)
class Watermark(Plugin):
    """Single-OoD-image ownership watermark with adversarially perturbed fine-tuning."""

    name: ClassVar[str] = "watermark"

    # when
    at: str = "end"
    """"end": inject once in on_run_end; "every_round": re-embed after aggregation from ``from_round``."""
    from_round: int = 1
    # trigger
    trigger: str = "patch"
    target: int = 0
    patch_size: int = 0
    """Side of the square patch; 0 = max(4, H // 4) (4 px on 8x8 digits, 8 px on 32x32: trojan_8x8)."""
    blend_alpha: float = 0.2
    # surrogate
    source: str = "astronaut"
    n_surrogate: int = 2000
    poison_ratio: float = 0.1
    n_verify_ood: int = 500
    # injection
    epochs: int = 20
    perturb_epochs: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    temperature: float = 0.5
    perturb: bool = True
    beta: float = 6.0
    gamma: float | str = "auto"
    """Relative radius of the per-layer weight perturbation; "auto" = :func:`auto_gamma`."""
    adv_lr: float = 0.0
    """v-step size (relative to ||w_l||); 0 = gamma (one step reaches the ball's surface, as the reference)."""
    adv_steps: int = 1
    # verification, attacks, control
    verify_fraction: float = 0.5
    attacks: tuple[str, ...] | list[str] = ATTACKS
    attack_epochs: int = 10
    attack_lr: float = 0.01
    attack_batch_size: int = 32
    control_epochs: int = 30
    control_lr: float = 0.05
    seed: int = 0
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool)

        def integer(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if self.at not in ("end", "every_round"):
            raise _bad("at", self.at, "'end' or 'every_round'")
        if not integer(self.from_round) or self.from_round < 1:
            raise _bad("from_round", self.from_round, "an integer >= 1")
        if self.trigger not in TRIGGERS:
            raise _bad("trigger", self.trigger, f"one of {list(TRIGGERS)}")
        if not integer(self.target) or self.target < 0:
            raise _bad("target", self.target, "a class index >= 0")
        if not integer(self.patch_size) or self.patch_size < 0:
            raise _bad("patch_size", self.patch_size, "an integer >= 0 (0 = auto)")
        if not num(self.blend_alpha) or not 0 < self.blend_alpha < 1:
            raise _bad("blend_alpha", self.blend_alpha, "a number in (0, 1)")
        if not isinstance(self.source, str) or not self.source:
            raise _bad("source", self.source, "a scikit-image sample name or an image path")
        for f, lo in (("n_surrogate", 10), ("n_verify_ood", 10), ("epochs", 1), ("batch_size", 1),
                      ("adv_steps", 1), ("attack_batch_size", 1)):
            v = getattr(self, f)
            if not integer(v) or v < lo:
                raise _bad(f, v, f"an integer >= {lo}")
        for f in ("perturb_epochs", "attack_epochs", "control_epochs", "seed"):
            v = getattr(self, f)
            if not integer(v) or v < 0:
                raise _bad(f, v, "an integer >= 0")
        if not num(self.poison_ratio) or not 0 < self.poison_ratio < 1:
            raise _bad("poison_ratio", self.poison_ratio, "a number in (0, 1)")
        if round(self.poison_ratio * self.n_surrogate) < 1:
            raise _bad("poison_ratio", self.poison_ratio, "at least one poisoned patch of n_surrogate")
        for f in ("lr", "temperature", "attack_lr", "control_lr"):
            v = getattr(self, f)
            if not num(v) or v <= 0:
                raise _bad(f, v, "a number > 0")
        if not num(self.momentum) or not 0 <= self.momentum < 1:
            raise _bad("momentum", self.momentum, "a number in [0, 1)")
        for f in ("weight_decay", "beta", "adv_lr"):
            v = getattr(self, f)
            if not num(v) or v < 0:
                raise _bad(f, v, "a number >= 0")
        if not (self.gamma == "auto" or (num(self.gamma) and 0 <= self.gamma <= 1)):
            raise _bad("gamma", self.gamma, "'auto' or a number in [0, 1]")
        if not isinstance(self.perturb, bool):
            raise _bad("perturb", self.perturb, "true or false")
        if not num(self.verify_fraction) or not 0 < self.verify_fraction < 1:
            raise _bad("verify_fraction", self.verify_fraction, "a number in (0, 1)")
        if not isinstance(self.attacks, (list, tuple)) or any(a not in ATTACKS for a in self.attacks):
            raise _bad("attacks", self.attacks, f"a list drawn from {list(ATTACKS)}")
        object.__setattr__(self, "attacks", tuple(self.attacks))

    # -- building blocks ------------------------------------------------------------------
    def trigger_fn(self, in_shape: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        c, h, w = (int(v) for v in in_shape)
        if self.trigger == "patch":
            s = self.patch_size or max(4, h // 4)
            if s > min(h, w):
                raise _bad("patch_size", s, f"at most the input side {min(h, w)}")
            pat = trojan_square(s, c)
            return lambda x: apply_patch(x, pat)
        pat = blend_pattern((c, h, w), self.seed)
        return lambda x: apply_blend(x, pat, self.blend_alpha)

    def resolve_gamma(self, model: nn.Module) -> float:
        return auto_gamma(model) if self.gamma == "auto" else float(self.gamma)

    def surrogate(self, in_shape: Sequence[int], *, verify: bool = False) -> torch.Tensor:
        from fedsec.data.surrogate import surrogate_patches

        n = self.n_verify_ood if verify else self.n_surrogate
        key = "verify" if verify else "inject"
        return surrogate_patches(n, tuple(in_shape), source=self.source,
                                 seed=derive_seed(self.seed, "watermark", key))

    def split(self, test: TensorData) -> tuple[TensorData, TensorData]:
        """(verification half, attacker half) of the test split, seeded."""
        perm = torch.randperm(len(test), generator=generator(self.seed, "watermark", "split"))
        k = int(round(self.verify_fraction * len(test)))
        return test.subset(perm[:k]), test.subset(perm[k:])

    def inject(self, model: nn.Module, in_shape: Sequence[int], *, perturb: bool | None = None,
               round_key: object = "end") -> tuple[nn.Module, dict[str, Any]]:
        """A watermarked copy of ``model`` (``model`` itself is left untouched) and its log."""
        perturb = self.perturb if perturb is None else perturb
        trig = self.trigger_fn(in_shape)
        t0 = time.perf_counter()
        dev = next(model.parameters()).device
        x = self.surrogate(in_shape)
        n = len(x)
        g = generator(self.seed, "watermark", "inject", round_key)
        poisoned = torch.zeros(n, dtype=torch.bool)
        poisoned[torch.randperm(n, generator=g)[: int(round(self.poison_ratio * n))]] = True
        with torch.no_grad():
            soft = F.softmax(logits_of(model, x) / self.temperature, dim=1)
        soft[poisoned] = F.one_hot(torch.tensor(self.target), soft.shape[1]).float()
        x[poisoned] = trig(x[poisoned])

        student = copy.deepcopy(model)
        for p in student.parameters():
            p.requires_grad_(True)
        gamma = self.resolve_gamma(student) if perturb else 0.0
        adv_lr = self.adv_lr or gamma
        pert = perturbed_parameters(student)
        opt = torch.optim.SGD(student.parameters(), lr=self.lr, momentum=self.momentum,
                              weight_decay=self.weight_decay)
        losses = []
        for epoch in range(self.epochs):
            _freeze_norm_stats(student)
            perm = torch.randperm(n, generator=g)
            tot = 0.0
            for i in range(0, n, self.batch_size):
                idx = perm[i : i + self.batch_size]
                xb, sb, pb = x[idx].to(dev), soft[idx].to(dev), poisoned[idx].to(dev)
                v = None
                if perturb and gamma > 0 and epoch < self.perturb_epochs:
                    v = self._adversary(student, pert, xb, sb, pb, gamma, adv_lr)
                    _add(pert, v)
                loss = _soft_ce(student(xb) / self.temperature, sb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if v is not None:
                    _add(pert, v, -1.0)  # gradient taken at w + v, step applied to w
                opt.step()
                tot += loss.item() * len(idx)
            losses.append(tot / n)
        student.eval()
        log = {"gamma": gamma, "perturb": perturb, "epochs": self.epochs,
               "loss_first": losses[0], "loss_last": losses[-1],
               "seconds": time.perf_counter() - t0}
        return student, log

    def _adversary(self, model: nn.Module, pert: list[nn.Parameter], xb: torch.Tensor, sb: torch.Tensor,
                   pb: torch.Tensor, gamma: float, adv_lr: float) -> list[torch.Tensor]:
        """v-step: normalised gradient ascent on L_inj + beta KL, projected on the gamma ball."""
        wnorm = [p.detach().norm() for p in pert]
        v = [torch.zeros_like(p) for p in pert]
        for _ in range(self.adv_steps):
            _add(pert, v)
            logits = model(xb)
            loss = _soft_ce(logits / self.temperature, sb) + self.beta * _consistency_kl(logits, pb)
            grads = torch.autograd.grad(loss, pert)
            _add(pert, v, -1.0)
            v = [vl + adv_lr * wn * gl / (gl.norm() + 1e-12) for vl, wn, gl in zip(v, wnorm, grads)]
            v = project_gamma_ball(v, pert, gamma)
        return v

    # -- verification -----------------------------------------------------------------------
    def measure(self, model: nn.Module, original: nn.Module, verify: TensorData, x_ood: torch.Tensor,
                trig: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
        """acc, ID / OoD WSR and both p-values of a suspect model."""
        from scipy import stats

        keep = verify.y != self.target
        x_id = verify.x[keep]
        lo_clean = logits_of(model, verify.x)
        acc = float((lo_clean.argmax(1) == verify.y).float().mean())
        lo_id_t = logits_of(model, trig(x_id))
        wsr_id = float((lo_id_t.argmax(1) == self.target).float().mean())
        x_ood_t = trig(x_ood)
        lo_ood_t = logits_of(model, x_ood_t)
        wsr_ood = float((lo_ood_t.argmax(1) == self.target).float().mean())
        # (2) one-sided paired test on the suspect alone
        p_t = F.softmax(lo_id_t, 1)[:, self.target].double().numpy()
        p_c = F.softmax(lo_clean[keep], 1)[:, self.target].double().numpy()
        p_paired = _finite_p(stats.ttest_rel(p_t, p_c, alternative="greater").pvalue)
        # (1) reference code: Welch t-test per class vs the original's logits, averaged
        lo_orig = logits_of(original, x_ood_t).double().numpy()
        with np.errstate(all="ignore"):
            ps = stats.ttest_ind(lo_ood_t.double().numpy(), lo_orig, axis=0, equal_var=False).pvalue
        p_ttest = float(np.mean([_finite_p(p) for p in np.atleast_1d(ps)]))
        return {"acc": acc, "wsr_id": wsr_id, "wsr_ood": wsr_ood, "p_value": p_paired, "p_ttest": p_ttest}

    def train_control(self, make_model: Callable[[], nn.Module], data: TensorData,
                      device: torch.device | str = "cpu") -> nn.Module:
        """An independently trained clean model (the negative control) on ``data``."""
        with scoped_seed(self.seed, "watermark", "control-init"):
            m = make_model().to(device)
        return train_supervised(m, data, epochs=self.control_epochs, lr=self.control_lr,
                                batch_size=self.attack_batch_size, seed=self.seed, key="control")

    def attack(self, name: str, model: nn.Module, data: TensorData) -> nn.Module:
        m = copy.deepcopy(model)
        for p in m.parameters():
            p.requires_grad_(True)
        kw = dict(epochs=self.attack_epochs, lr=self.attack_lr, batch_size=self.attack_batch_size,
                  seed=self.seed, key=f"attack-{name}")
        if name == "FT-AL":
            return train_supervised(m, data, **kw)
        if name == "FT-LL":
            return train_supervised(m, data, params=list(last_linear(m).parameters()), **kw)
        if name == "RT-AL":
            with scoped_seed(self.seed, "watermark", "rt-al-init"):
                last_linear(m).reset_parameters()
            return train_supervised(m, data, **kw)
        if name.startswith("Pruning-"):
            return magnitude_prune(m, float(name.removeprefix("Pruning-").rstrip("%")) / 100).eval()
        raise _bad("attacks", name, f"one of {list(ATTACKS)}")

    def evaluate(self, original: nn.Module, watermarked: nn.Module, test: TensorData,
                 in_shape: Sequence[int], *, make_model: Callable[[], nn.Module] | None = None,
                 control: nn.Module | None = None, injection: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
        """The paper's table for one watermarked model: original, victim, attacks, negative control."""
        verify, attacker = self.split(test)
        trig = self.trigger_fn(in_shape)
        x_ood = self.surrogate(in_shape, verify=True)
        dev = next(watermarked.parameters()).device
        out: dict[str, Any] = {
            "trigger": self.trigger, "target": self.target, "at": self.at,
            "n_verify": len(verify), "n_attacker": len(attacker), "n_verify_ood": len(x_ood),
        }
        if injection is not None:
            out["injection"] = injection
        out["original"] = self.measure(original, original, verify, x_ood, trig)
        out["watermarked"] = self.measure(watermarked, original, verify, x_ood, trig)
        out["acc_drop"] = out["original"]["acc"] - out["watermarked"]["acc"]
        out["attacks"] = {a: self.measure(self.attack(a, watermarked, attacker), original, verify, x_ood, trig)
                          for a in self.attacks}
        if control is None and make_model is not None:
            control = self.train_control(make_model, attacker, dev)
        if control is not None:
            out["control"] = self.measure(control, original, verify, x_ood, trig)
        return out

    # -- hooks -----------------------------------------------------------------------------
    def on_round_end(self, server_round: int, model: nn.Module, ctx: PluginContext) -> nn.Module | None:
        if self.at != "every_round" or server_round < self.from_round:
            return None
        st = self._state
        if "original" not in st:
            st["original"] = copy.deepcopy(model).eval()
        verify, _ = self.split(ctx.test)
        trig = self.trigger_fn(ctx.in_shape)
        before = logits_of(model, verify.x).argmax(1)
        wm, log = self.inject(model, ctx.in_shape, round_key=server_round)
        after_clean = logits_of(wm, verify.x).argmax(1)
        keep = verify.y != self.target
        wsr = float((logits_of(wm, trig(verify.x[keep])).argmax(1) == self.target).float().mean())
        st["last_acc_before"] = float((before == verify.y).float().mean())
        st["injection"] = log
        st["rounds"] = st.get("rounds", 0) + 1
        ctx.round_metrics.update({
            "watermark_acc_before": st["last_acc_before"],
            "watermark_acc_after": float((after_clean == verify.y).float().mean()),
            "watermark_wsr_id": wsr,
        })
        return wm

    def on_run_end(self, model: nn.Module, ctx: PluginContext) -> dict[str, Any]:
        st = self._state
        if self.at == "end":
            original = model
            wm, log = self.inject(model, ctx.in_shape)
        else:
            original = st.get("original", model)
            wm, log = model, {**st.get("injection", {}), "rounds": st.get("rounds", 0)}
        res = self.evaluate(original, wm, ctx.test, ctx.in_shape, make_model=ctx.make_model,
                            injection=log)
        if self.at == "every_round" and "last_acc_before" in st:
            res["acc_before_last_injection"] = st["last_acc_before"]
        if ctx.run_dir is not None:
            from safetensors.torch import save

            from fedsec.results import atomic_write

            atomic_write(Path(ctx.run_dir) / "watermark.md", format_table(res))
            if self.at == "end":  # the server already wrote the un-watermarked final model
                state = {k: v.detach().cpu().contiguous() for k, v in wm.state_dict().items()}
                atomic_write(Path(ctx.run_dir) / "watermarked.safetensors", save(state))
                res["model_file"] = "watermarked.safetensors"
        return res


def _finite_p(p: Any) -> float:
    p = float(p)
    return 1.0 if not math.isfinite(p) else p


def _fmt_p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.3e}"


def format_table(res: dict[str, Any], title: str = "") -> str:
    """The paper-style markdown table (Table 2 layout) for one ``evaluate`` result."""
    o, w = res["original"], res["watermarked"]
    inj = res.get("injection", {})
    lines = [f"### {title}" if title else "### Watermark", ""]
    lines.append(
        f"trigger={res['trigger']} target={res['target']} gamma={inj.get('gamma', float('nan')):.4g} "
        f"perturb={inj.get('perturb')} | verification n={res['n_verify']} (ID), "
        f"{res['n_verify_ood']} (OoD); attacker n={res['n_attacker']}"
    )
    lines += ["", "| model | acc | ID WSR | OoD WSR | p-value (paired) | p-value (ref. Welch) |",
              "|---|---|---|---|---|---|"]

    def row(name: str, m: dict[str, float]) -> str:
        return (f"| {name} | {m['acc']:.4f} | {m['wsr_id']:.4f} | {m['wsr_ood']:.4f} | "
                f"{_fmt_p(m['p_value'])} | {_fmt_p(m['p_ttest'])} |")

    lines.append(row("non-watermarked", o))
    lines.append(row("victim (watermarked)", w))
    for a, m in res.get("attacks", {}).items():
        lines.append(row(a, m))
    if "control" in res:
        lines.append(row("negative control (clean, independent)", res["control"]))
    return "\n".join(lines) + "\n"


__all__ = [
    "Watermark", "format_table", "project_gamma_ball", "auto_gamma", "trojan_square", "apply_patch",
    "blend_pattern", "apply_blend", "magnitude_prune", "train_supervised",
]

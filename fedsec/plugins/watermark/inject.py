"""Watermark injection by adversarially perturbed fine-tuning (Yu, Hong et al., ICLR 2024, Eq. 3-5).

::

    min_w  max_{||v_l|| <= gamma ||w_l||}  L_inj(w + v) + beta * KL(f_{w+v}(x_c) || f_{w+v}(T(x_p)))

Each batch alternates a v-step (:func:`adversary`: normalised, layer-wise
scaled gradient *ascent* on ``v``, projected back onto the per-layer gamma
ball by :func:`project_gamma_ball`) and a w-step (SGD on ``L_inj`` evaluated
at ``w + v``, applied to ``w``). As in the reference code
(``utils_awp.TradesAWP``): only weight tensors with ``dim > 1`` are perturbed,
``v`` restarts from 0 for every batch, the KL consistency term enters the
v-step only, the w-step minimises ``L_inj`` = soft cross-entropy at
temperature ``T``, and perturbation runs only in the first ``perturb_epochs``.

The w-step runs in :func:`fedsec.training.sgd_train` (the project's one SGD
loop) with a loss that evaluates the model at ``w + v`` through
``torch.func.functional_call``: the gradient is taken at ``w + v`` and the
step lands on ``w`` exactly (the pre-refactor loop added and subtracted ``v``
in place, leaving ``w`` off by float rounding).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedsec.data import TensorData
from fedsec.training import sgd_train


def perturbed_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The tensors the adversary perturbs (and pruning prunes): conv / linear kernels (``dim > 1``)."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() > 1]


def _perturbed_names(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1]


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


def soft_ce(logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against soft labels ``soft`` (B, C), mean over the batch."""
    return -(soft * F.log_softmax(logits, dim=1)).sum(1).mean()


def consistency_kl(logits: torch.Tensor, poisoned: torch.Tensor) -> torch.Tensor:
    """KL(f(x_clean) || f(T(x_poisoned))) over pairs of clean / triggered samples of a batch."""
    lp, lc = logits[poisoned], logits[~poisoned]
    m = min(len(lp), len(lc))
    if m == 0:
        return logits.new_zeros(())
    return F.kl_div(F.log_softmax(lp[:m], 1), F.softmax(lc[:m], 1), reduction="batchmean")


def freeze_norm_stats(model: nn.Module) -> None:
    """Train mode except BatchNorm / Dropout: OoD patches never overwrite running statistics."""
    model.train()
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            m.eval()


def adversary(model: nn.Module, names: Sequence[str], xb: torch.Tensor, sb: torch.Tensor,
              pb: torch.Tensor, *, gamma: float, adv_lr: float, steps: int, temperature: float,
              beta: float) -> dict[str, torch.Tensor]:
    """v-step: normalised gradient ascent on L_inj + beta KL, projected on the gamma ball.

    ``xb`` (B, C, H, W) inputs, ``sb`` (B, K) soft labels, ``pb`` (B,) bool
    triggered rows. Returns ``v`` by parameter name (detached); the model's
    weights are never modified.
    """
    params = dict(model.named_parameters())
    w = [params[n].detach() for n in names]
    wnorm = [wl.norm() for wl in w]
    v = [torch.zeros_like(wl) for wl in w]
    for _ in range(steps):
        wv = [(wl + vl).requires_grad_(True) for wl, vl in zip(w, v)]
        logits = functional_call(model, dict(zip(names, wv)), (xb,))
        loss = soft_ce(logits / temperature, sb) + beta * consistency_kl(logits, pb)
        grads = torch.autograd.grad(loss, wv)
        v = [vl + adv_lr * wn * gl / (gl.norm() + 1e-12) for vl, wn, gl in zip(v, wnorm, grads)]
        v = project_gamma_ball(v, w, gamma)
    return dict(zip(names, v))


def inject(model: nn.Module, x: torch.Tensor, soft: torch.Tensor, poisoned: torch.Tensor, *,
           generator: torch.Generator, epochs: int, perturb_epochs: int, lr: float, momentum: float,
           weight_decay: float, batch_size: int, temperature: float, beta: float, gamma: float,
           adv_lr: float, adv_steps: int) -> tuple[nn.Module, dict[str, Any]]:
    """A watermarked copy of ``model`` fine-tuned on the surrogate set; ``model`` is untouched.

    ``x`` (N, C, H, W) surrogate inputs (triggered rows already stamped),
    ``soft`` (N, K) soft labels (one-hot ``target`` on triggered rows),
    ``poisoned`` (N,) bool. ``gamma`` = 0 gives plain fine-tuning. Batch order
    comes from ``generator``. Returns the model (eval mode) and a log.
    """
    t0 = time.perf_counter()
    student = copy.deepcopy(model)
    for p in student.parameters():
        p.requires_grad_(True)
    dev = next(student.parameters()).device
    names = _perturbed_names(student)
    soft_d, poisoned_d = soft.to(dev), poisoned.to(dev)
    n = len(x)
    batches_per_epoch = math.ceil(n / batch_size)
    step = [0]
    loss_sum = [0.0] * epochs

    def loss_fn(m: nn.Module, xb: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        # sgd_train calls the loss once per batch in order: the count gives the epoch
        epoch = step[0] // batches_per_epoch
        step[0] += 1
        freeze_norm_stats(m)
        sb, pb = soft_d[idx], poisoned_d[idx]
        if gamma > 0 and epoch < perturb_epochs:
            v = adversary(m, names, xb, sb, pb, gamma=gamma, adv_lr=adv_lr, steps=adv_steps,
                          temperature=temperature, beta=beta)
            params = dict(m.named_parameters())
            logits = functional_call(m, {k: params[k] + v[k] for k in names}, (xb,))
        else:
            logits = m(xb)
        loss = soft_ce(logits / temperature, sb)
        loss_sum[epoch] += float(loss.detach()) * len(idx)
        return loss

    # y carries row indices into the soft-label and poisoned tables
    sgd_train(student, TensorData(x, torch.arange(n)), epochs=epochs, batch_size=batch_size, lr=lr,
              momentum=momentum, weight_decay=weight_decay, generator=generator, device=dev,
              loss_fn=loss_fn)
    student.eval()
    return student, {"gamma": gamma, "perturb": gamma > 0, "epochs": epochs,
                     "loss_first": loss_sum[0] / n, "loss_last": loss_sum[-1] / n,
                     "seconds": time.perf_counter() - t0}


__all__ = ["perturbed_parameters", "project_gamma_ball", "auto_gamma", "soft_ce", "consistency_kl",
           "freeze_norm_stats", "adversary", "inject"]

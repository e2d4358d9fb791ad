"""Self-Retrospection (SR; Hong et al., ICML 2023, Sec. 4.2 and Algorithm 1).

From step ``lambda`` (``sr_start``, a fraction of ``steps``) on, each student
step first finds a universal perturbation ``delta`` (``||delta||_2 <= sr_eps``)
by ``sr_n_delta`` Adam steps of ascent on ``KL(S(x) || S(x + delta))`` with a
``sr_l2 * ||delta||^2`` penalty (:func:`sr_find_delta`), then descends
``KL(S(x) || S(x + delta(theta)))`` on a portion of the batch through the
implicit hypergradient (:func:`sr_hypergradient`): ``delta`` is treated as a
fixed point of one gradient step of the inner problem and the hypergradient is
estimated by ``sr_fp_iters`` fixed-point iterations (Grazzi et al., ICML 2020),
as the reference does with ``hypergrad.fixed_point``. ``sr_mode="first_order"``
(``delta`` held constant) is a cheaper option, never the default.
:func:`sr_student_step` adds that hypergradient to the KD gradient in one step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedsec.plugins.abd.config import ABDConfig
from fedsec.plugins.abd.divergence import kl_per_sample


def _project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    n = float(delta.norm())
    return delta * (eps / n) if n > eps else delta


def sr_find_delta(model: nn.Module, x: torch.Tensor, cfg: ABDConfig, gen: torch.Generator) -> torch.Tensor:
    """Universal ``delta`` (shape (1, C, H, W), ``||delta||_2 <= sr_eps``): Adam
    ascent on ``KL(S(x) || S(x + delta))`` minus ``sr_l2 * ||delta||^2``.

    Starts from a small Gaussian (Algorithm 1; sigma = 1e-3): at exactly zero
    the KL has a vanishing gradient."""
    delta = (1e-3 * torch.randn((1, *x.shape[1:]), generator=gen)).to(x.device).requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=cfg.sr_delta_lr)
    with torch.no_grad():
        clean = model(x)
    for _ in range(cfg.sr_n_delta):
        loss = -kl_per_sample(clean, model(x + delta)).mean() + cfg.sr_l2 * delta.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            delta.copy_(_project_l2(delta, cfg.sr_eps))
    for p in model.parameters():  # drop the grads the delta search left on the student
        p.grad = None
    return delta.detach()


def sr_hypergradient(
    student: nn.Module, x: torch.Tensor, delta: torch.Tensor, cfg: ABDConfig, gen: torch.Generator
) -> tuple[list[torch.Tensor], float]:
    """Gradient wrt the student's parameters of the outer SR loss
    ``KL(S(x) || S(x + m * delta(theta)))`` (``m`` marks ``sr_portion`` of the
    batch), with ``d delta / d theta`` from the implicit function theorem on
    the fixed point ``delta = delta - sr_fp_lr * grad_delta L_in`` (``sr_fp_iters``
    fixed-point iterations; ``sr_mode="first_order"`` drops that term).

    Returns one gradient per trainable parameter (its shape) and the outer loss."""
    params = [p for p in student.parameters() if p.requires_grad]
    b = len(x)
    k = max(1, int(round(b * cfg.sr_portion)))
    idx = torch.randperm(b, generator=gen)[:k].to(x.device)
    mask = torch.zeros(b, 1, 1, 1, device=x.device)
    mask[idx] = 1.0
    d = delta.detach().clone().requires_grad_(True)
    with torch.no_grad():
        clean = student(x)
    outer = kl_per_sample(clean, student(x + mask * d)).mean()
    g_d, *g_theta = torch.autograd.grad(outer, [d, *params], allow_unused=True)
    g_theta = [torch.zeros_like(p) if g is None else g for g, p in zip(g_theta, params)]
    if cfg.sr_mode == "first_order":
        return g_theta, float(outer.detach())
    # Fixed-point map Phi(d, theta) = d - eta * dL_in/dd, built once with its graph.
    inner = -kl_per_sample(clean, student(x + d)).mean() + cfg.sr_l2 * d.pow(2).sum()
    (grad_inner,) = torch.autograd.grad(inner, d, create_graph=True)
    mapped = d - cfg.sr_fp_lr * grad_inner
    v = torch.zeros_like(d)
    for _ in range(cfg.sr_fp_iters):
        (jv,) = torch.autograd.grad(mapped, d, grad_outputs=v, retain_graph=True)
        v = jv + g_d
    cross = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
    grads = [gt + (torch.zeros_like(gt) if c is None else c) for gt, c in zip(g_theta, cross)]
    return grads, float(outer.detach())


def sr_student_step(
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    kd_loss: Callable[[], torch.Tensor],
    cfg: ABDConfig,
    gen: torch.Generator,
) -> float:
    """One retrospective student step on batch ``x``: the gradient of
    ``kd_loss()`` plus ``sr_coef`` times the SR hypergradient. Returns the outer SR loss."""
    delta = sr_find_delta(student, x, cfg, gen)
    grads, outer = sr_hypergradient(student, x, delta, cfg, gen)
    optimizer.zero_grad()
    kd_loss().backward()
    for p, g in zip([p for p in student.parameters() if p.requires_grad], grads):
        p.grad = p.grad + cfg.sr_coef * g if p.grad is not None else cfg.sr_coef * g
    optimizer.step()
    return outer

"""OOD KD: distillation on augmented patches of one out-of-distribution image.

The transfer set is ``ood_n`` augmented patches of one image
(:func:`fedsec.data.surrogate.surrogate_patches`), distilled with
temperature-softened KL and CutMix (probability 1, ``Beta(cutmix_beta,
cutmix_beta)`` mixing), as in the reference's ``cmi/vanilla_kd_ood.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedsec.plugins.abd.config import ABDConfig
from fedsec.plugins.abd.vaccine import Vaccine


def surrogate_transfer_set(cfg: ABDConfig, in_shape: tuple[int, int, int]) -> torch.Tensor:
    """(``ood_n``, C, H, W) patches of ``cfg.ood_source`` in [0, 1], seeded by ``cfg.seed``."""
    from fedsec.data.surrogate import surrogate_patches

    return surrogate_patches(cfg.ood_n, in_shape, source=cfg.ood_source, seed=cfg.seed)


def _beta_sample(a: float, gen: torch.Generator) -> float:
    """Beta(a, a) by Johnk's method (torch.distributions takes no generator)."""
    for _ in range(10000):
        u, v = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
        x, y = u ** (1.0 / a), v ** (1.0 / a)
        if 0.0 < x + y <= 1.0:
            return x / (x + y)
    return 0.5


def cutmix(x: torch.Tensor, beta: float, gen: torch.Generator) -> torch.Tensor:
    """CutMix of a batch (B, C, H, W) with a permutation of itself: one box of
    area about ``(1 - lam) H W``, ``lam ~ Beta(beta, beta)``. Returns a new tensor
    (``x`` itself when the box is empty)."""
    lam = _beta_sample(beta, gen)
    b, _, h, w = x.shape
    rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy = int(torch.randint(h, (1,), generator=gen))
    cx = int(torch.randint(w, (1,), generator=gen))
    y1, y2 = max(cy - rh // 2, 0), min(cy + rh // 2, h)
    x1, x2 = max(cx - rw // 2, 0), min(cx + rw // 2, w)
    if y2 <= y1 or x2 <= x1:
        return x
    perm = torch.randperm(b, generator=gen).to(x.device)
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    return x


class TransferSetSource:
    """Transfer batches drawn (with replacement, from ``gen``) from the one-image
    transfer set and CutMixed; one unclipped student step per batch."""

    student_iters = 1
    clip: float | None = None

    def __init__(self, cfg: ABDConfig, in_shape: tuple[int, int, int], device: torch.device,
                 gen: torch.Generator) -> None:
        self.cfg, self.device, self.gen = cfg, device, gen
        self.data = surrogate_transfer_set(cfg, in_shape).to(device)

    def prepare(self, vaccine: Vaccine | None) -> None:
        """Select the vaccine's shuffle on the first ``sv_probe_steps`` batches' worth of the set."""
        if vaccine is not None:
            cfg = self.cfg
            probe_n = min(len(self.data), max(cfg.batch_size, cfg.sv_probe_steps * cfg.batch_size))
            vaccine.select(self.data[:probe_n])

    def batch(
        self, teacher: nn.Module, student: nn.Module, vaccine: Vaccine | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(self.data), (self.cfg.batch_size,), generator=self.gen).to(self.device)
        x = cutmix(self.data[idx], self.cfg.cutmix_beta, self.gen)
        with torch.no_grad():
            t_logits = teacher(x)
        return x, t_logits

    def end_step(self) -> None:
        pass

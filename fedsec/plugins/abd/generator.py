"""ZSKT: the adversarial generator of data-free KD (Micaelli & Storkey, NeurIPS 2019).

A generator ``G(z)`` maximises the teacher-student disagreement
``KL(T(x) || S(x))`` while the student minimises it: per step, one generator
step, then ``n_student_iter`` student steps on that batch (:mod:`.kd`). With an
active Shuffling Vaccine the generator also maximises ``alpha * R(x)``,
``R = phi * KL(T || T~)`` (ABD's suppression of malicious synthesis; the
reference ZSKT solver applies SV on this side only, ``BackdoorSuspectLoss``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedsec.plugins.abd.config import ABDConfig
from fedsec.plugins.abd.divergence import kl_per_sample
from fedsec.plugins.abd.vaccine import Vaccine, suspicious
from fedsec.seeding import scoped_seed


class Generator(nn.Module):
    """ZSKT-style generator: z (B, z_dim) -> x (B, C, H, W) in [0, 1] (sigmoid of a non-affine BN)."""

    def __init__(self, z_dim: int, in_shape: tuple[int, int, int], width: int = 128) -> None:
        super().__init__()
        c, h, w = in_shape
        self.out_hw = (h, w)
        self.s = max(1, math.ceil(h / 4)), max(1, math.ceil(w / 4))
        self.fc = nn.Linear(z_dim, width * self.s[0] * self.s[1])
        self.width = width
        self.body = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.BatchNorm2d(width // 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width // 2, c, 3, padding=1),
            nn.BatchNorm2d(c, affine=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.body(self.fc(z).view(len(z), self.width, *self.s))
        if tuple(x.shape[-2:]) != self.out_hw:
            x = F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


def malicious_synthesis(t_logits: torch.Tensor, shuffled_logits: torch.Tensor) -> torch.Tensor | None:
    """``R``: the mean ``KL(T || T~)`` over the suspicious inputs (``phi = 1``),
    a scalar the generator maximises (weighted by ``sv_alpha``); None when no
    input of the batch is suspicious. Logits (B, C)."""
    phi = suspicious(t_logits.detach(), shuffled_logits.detach())
    if not phi.sum() > 0:
        return None
    return (phi * kl_per_sample(t_logits, shuffled_logits)).sum() / phi.sum()


class GeneratorSource:
    """Transfer batches synthesised by a ZSKT generator trained against the student.

    Each :meth:`batch` takes one generator step on fresh noise (from ``gen``),
    then returns that noise's images from the updated generator and the
    teacher's logits on them; the student then takes ``n_student_iter`` steps,
    each gradient clipped to ``grad_clip``.
    """

    def __init__(self, cfg: ABDConfig, in_shape: tuple[int, int, int], device: torch.device,
                 gen: torch.Generator, temperature: float) -> None:
        self.cfg, self.device, self.gen, self.temperature = cfg, device, gen, temperature
        with scoped_seed(cfg.seed, "abd", "generator"):
            self.net = Generator(cfg.z_dim, in_shape, cfg.gen_width).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr_generator)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, max(1, cfg.steps))
        self.student_iters = cfg.n_student_iter
        self.clip: float | None = cfg.grad_clip

    def prepare(self, vaccine: Vaccine | None) -> None:
        """Nothing to probe before training: the vaccine observes the first synthetic batches."""

    def batch(
        self, teacher: nn.Module, student: nn.Module, vaccine: Vaccine | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        z = torch.randn(cfg.batch_size, cfg.z_dim, generator=self.gen).to(self.device)
        self.net.train()
        x = self.net(z)
        t_logits = teacher(x)
        s_logits = student(x)
        loss = -kl_per_sample(t_logits, s_logits, self.temperature).mean()
        # Built after the KD term, as in the original loop: autograd accumulates the input
        # gradients in graph-creation order, so this keeps the students bitwise the same.
        if vaccine is not None and vaccine.model is not None:
            r = malicious_synthesis(t_logits, vaccine.model(x))
            if r is not None:
                loss = loss - cfg.sv_alpha * r
        self.opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
        self.opt.step()
        for p in student.parameters():  # the generator's backward passed through the student
            p.grad = None
        with torch.no_grad():
            x = self.net(z)
            t_logits = teacher(x)
        if vaccine is not None:
            vaccine.observe(x)
        return x, t_logits

    def end_step(self) -> None:
        self.sched.step()

"""Gaussian noise Byzantine attack.

Blanchard, El Mhamdi, Guerraoui, Stainer. "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent." NeurIPS 2017, arXiv:1703.02757 (the
Gaussian Byzantine workers of its experiments). The attacker discards its
training result and submits ``G + e`` with ``e ~ N(0, sigma^2 I)``
(``sigma``), drawn from ``task.generator``, so its update ``e`` is pure noise.

Only trainable parameters are rewritten unless ``include_buffers`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.clients.attacks._common import check, is_num, rewrite_update
from fedsec.clients.base import Behaviour, ClientTask, register_behaviour


@register_behaviour("gaussian")
@dataclass(frozen=True, kw_only=True)
class Gaussian(Behaviour):
    """Submit G + N(0, sigma^2 I) instead of the trained model (Blanchard et al. 2017)."""

    sigma: float = 1.0
    """Standard deviation of every coordinate of the submitted update."""
    include_buffers: bool = False

    def __post_init__(self) -> None:
        check(is_num(self.sigma) and self.sigma >= 0, "sigma", self.sigma, "a number >= 0")
        check(isinstance(self.include_buffers, bool), "include_buffers", self.include_buffers,
              "true or false")

    def finalize(self, task: ClientTask) -> None:
        sigma = float(self.sigma)
        g = task.generator

        def noise(d: torch.Tensor, key: str) -> torch.Tensor:
            e = torch.randn(d.shape, generator=g, device=g.device, dtype=d.dtype)
            return sigma * e.to(d.device)

        rewrite_update(task.model, task.global_state, noise, include_buffers=self.include_buffers)

"""Norm clipping with optional weak differential privacy.

Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?",
NeurIPS 2019 FL workshop, arXiv:1911.07963.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies._functional import clip_factors, gaussian, row_norms
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_real,
    register_aggregator,
)


@register_aggregator("norm_clip")
@dataclass(frozen=True, kw_only=True)
class NormClip(Aggregator):
    """x_i <- x_i * min(1, M / |x_i|); weighted average; + N(0, sigma^2 I).

    Parameters
    ----------
    M     : M, the norm bound each update is clipped to (> 0).
    sigma : sigma, the std of the Gaussian noise added to the average
            ("weak DP"); 0 disables it. Noise comes from the call's generator.

    All clients are accepted; scores = |x_i| / M (> 1 means clipped).
    """

    name = "norm_clip"
    M: float = 1.0
    sigma: float = 0.0

    def validate(self) -> None:
        owner = self.name
        check_param(is_real(self.M) and self.M > 0, owner, "M", self.M, "a number > 0")
        check_param(is_real(self.sigma) and self.sigma >= 0, owner, "sigma", self.sigma,
                    "a number >= 0")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n, d = U.shape
        norms = row_norms(U)
        coef = clip_factors(norms, float(self.M))
        w = torch.ones(n, dtype=torch.float64, device=U.device) if weights is None else weights.to(torch.float64)
        vector = clipped_mean(U, coef, w)
        if self.sigma > 0:
            vector = vector + self.sigma * gaussian((d,), vector, generator)
        return AggregationResult(
            vector=vector,
            accepted=torch.ones(n, dtype=torch.bool, device=U.device),
            scores=norms / self.M,
        )


def clipped_mean(U: torch.Tensor, clip: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum_i w_i clip_i x_i / sum_i w_i, without materialising the clipped rows."""
    return ((w * clip) / w.sum()).to(U.dtype) @ U

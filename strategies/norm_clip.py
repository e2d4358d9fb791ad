"""Norm bounding with optional weak differential privacy.

Sun, Kairouz, Suresh, McMahan, "Can You Really Backdoor Federated Learning?",
NeurIPS 2019 FL workshop, arXiv 1911.07963.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies._functional import clip_factors, gaussian, row_norms, weighted_mean
from strategies.base import AggregationResult, Aggregator, check_param, is_real, register_aggregator


@register_aggregator("norm_clip")
@dataclass(frozen=True, kw_only=True)
class NormClip(Aggregator):
    """Clip every update to L2 norm M, average (weighted), add N(0, sigma^2 I).

    M     : the norm bound.
    sigma : std of the Gaussian noise added to the average (0 = none; the paper's weak DP).
    scores: each update's norm / M.
    """

    M: float = 1.0
    sigma: float = 0.0

    def validate(self) -> None:
        check_param(is_real(self.M) and self.M > 0, "norm_clip", "M", self.M, "a number > 0")
        check_param(is_real(self.sigma) and self.sigma >= 0, "norm_clip", "sigma", self.sigma, "a number >= 0")

    def aggregate(self, U, weights, *, generator=None, rows=None):
        norms = row_norms(U)
        clipped = U * clip_factors(norms, self.M).to(U.dtype)[:, None]
        v = weighted_mean(clipped, weights)
        if self.sigma > 0:
            v = v + self.sigma * gaussian(tuple(v.shape), v, generator)
        return AggregationResult(v, torch.ones(len(U), dtype=torch.bool, device=U.device), norms / self.M)

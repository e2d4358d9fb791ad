"""Coordinate-wise trimmed mean.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018, arXiv 1803.01498.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from strategies._functional import by_column_blocks
from strategies.base import AggregationResult, Aggregator, check_param, is_int, is_real, register_aggregator, require_clients


@register_aggregator("trimmed_mean")
@dataclass(frozen=True, kw_only=True)
class TrimmedMean(Aggregator):
    """Per coordinate, drop the k largest and k smallest values and average the rest.

    f    : k, the number trimmed per side; or
    beta : the fraction trimmed per side, k = floor(beta * n) (Flower's FedTrimmedAvg).
    Exactly one of the two.
    """

    f: int | None = None
    beta: float | None = None

    def validate(self) -> None:
        check_param((self.f is None) != (self.beta is None), "trimmed_mean", "f/beta",
                    (self.f, self.beta), "exactly one of f or beta")
        if self.f is not None:
            check_param(is_int(self.f) and self.f >= 0, "trimmed_mean", "f", self.f, "an integer >= 0")
        if self.beta is not None:
            check_param(is_real(self.beta) and 0 <= self.beta < 0.5, "trimmed_mean", "beta", self.beta,
                        "a number in [0, 0.5)")

    def trim(self, n: int) -> int:
        return self.f if self.f is not None else int(math.floor(self.beta * n))

    def aggregate(self, U, weights, *, generator=None, rows=None):
        n = len(U)
        k = self.trim(n)
        require_clients("trimmed_mean", n, 2 * k + 1, f"n > 2k with k={k} trimmed per side")
        return AggregationResult(trimmed(U, k), torch.ones(n, dtype=torch.bool, device=U.device))


def trimmed(U: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the middle n - 2k order statistics of each column.

    Total minus the k largest minus the k smallest (two topk, accumulated in
    float64) instead of a full sort of every column.
    """
    n = U.shape[0]
    if k == 0:
        return U.mean(dim=0)

    def block(B: torch.Tensor) -> torch.Tensor:
        top = B.topk(k, dim=0).values.sum(dim=0, dtype=torch.float64)
        bottom = B.topk(k, dim=0, largest=False).values.sum(dim=0, dtype=torch.float64)
        return ((B.sum(dim=0, dtype=torch.float64) - top - bottom) / (n - 2 * k)).to(B.dtype)

    return by_column_blocks(block, U)

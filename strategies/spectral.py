"""Spectral signatures.

Tran, Li, Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018,
arXiv 1811.00636 (applied to client updates instead of representations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from strategies._functional import top_direction, weighted_mean
from strategies.base import AggregationResult, Aggregator, check_param, is_real, register_aggregator


@register_aggregator("spectral")
@dataclass(frozen=True, kw_only=True)
class Spectral(Aggregator):
    """Centre the updates, take the top right singular vector v, score
    tau_i = ((U_i - mean) . v)^2, remove the ceil(1.5 eps n) highest, average the rest.

    eps : expected fraction of poisoned clients (the paper removes 1.5 eps).
    """

    eps: float = 0.1

    def validate(self) -> None:
        check_param(is_real(self.eps) and 0 <= self.eps < 0.5, "spectral", "eps", self.eps, "a number in [0, 0.5)")

    def aggregate(self, U, weights, *, generator=None, rows=None):
        n = len(U)
        Xc = U - U.mean(dim=0)
        _, v = top_direction(Xc, generator)
        tau = (Xc @ v) ** 2
        k = min(math.ceil(1.5 * self.eps * n), n - 1)
        keep = torch.ones(n, dtype=torch.bool, device=U.device)
        if k > 0:
            keep[torch.topk(tau, k).indices] = False
        return AggregationResult(weighted_mean(U, weights, keep), keep, tau)

"""Iterative spectral filtering for robust mean estimation.

Diakonikolas, Kamath, Kane, Li, Moitra, Stewart, "Robust Estimators in High
Dimensions without the Computational Intractability", FOCS 2016
(arXiv 1604.06443), and "Being Robust (in High Dimensions) Can Be Practical",
ICML 2017 (arXiv 1703.00893).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from strategies._functional import by_column_blocks, coordinate_median, top_direction, weighted_mean
from strategies.base import AggregationResult, Aggregator, check_param, is_real, register_aggregator


@register_aggregator("filtering")
@dataclass(frozen=True, kw_only=True)
class Filtering(Aggregator):
    """While the top eigenvalue of the kept points' covariance exceeds what clean
    data would show, remove the points with the largest squared projection on
    the top eigenvector; return the (weighted) mean of the rest.

    eps   : expected corrupted fraction; at most 2 eps n points are removed.
    c     : slack of the stopping threshold (see below).

    Clean scale: sigma^2 = median over coordinates of (MAD_j / 0.6745)^2 of all
    updates, a robust per-coordinate variance that outliers (< 1/2) cannot
    inflate. Threshold: the Marchenko-Pastur edge sigma^2 (1 + sqrt(d / k))^2 of
    an isotropic clean sample of k points in d dimensions, times (1 + c eps).
    Each step removes the points above the (1 - eps/2) quantile of the
    projections (at least one): deterministic, unlike the paper's randomized
    threshold, and few eigen-solves.
    """

    eps: float = 0.1
    c: float = 1.0

    def validate(self) -> None:
        check_param(is_real(self.eps) and 0 < self.eps < 0.5, "filtering", "eps", self.eps, "a number in (0, 0.5)")
        check_param(is_real(self.c) and self.c >= 0, "filtering", "c", self.c, "a number >= 0")

    def aggregate(self, U, weights, *, generator=None, rows=None):
        n, d = U.shape
        sigma2 = clean_scale(U)
        keep = torch.ones(n, dtype=torch.bool, device=U.device)
        scores = torch.zeros(n, dtype=U.dtype, device=U.device)
        budget = int(2 * self.eps * n)
        while int((~keep).sum()) < budget:
            idx = keep.nonzero().squeeze(1)
            X = U[idx]
            Xc = X - X.mean(dim=0)
            lam, v = top_direction(Xc, generator)
            tau = (Xc @ v) ** 2
            scores[idx] = tau
            k = len(idx)
            if lam <= sigma2 * (1 + math.sqrt(d / k)) ** 2 * (1 + self.c * self.eps):
                break
            cut = torch.quantile(tau.to(torch.float64), 1 - self.eps / 2)
            drop = tau.to(torch.float64) > cut
            if not bool(drop.any()):
                drop[int(torch.argmax(tau))] = True
            room = budget - int((~keep).sum())
            drop_idx = idx[drop]
            if len(drop_idx) > room:
                drop_idx = idx[torch.topk(tau, room).indices]
            keep[drop_idx] = False
        return AggregationResult(weighted_mean(U, weights, keep), keep, scores)


def clean_scale(U: torch.Tensor) -> float:
    mad = by_column_blocks(lambda B: coordinate_median((B - coordinate_median(B)).abs()), U)
    return float(coordinate_median(((mad / 0.6745) ** 2)[:, None])[0])

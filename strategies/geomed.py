"""Geometric median by smoothed Weiszfeld iterations (RFA).

Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning",
IEEE Transactions on Signal Processing 2022, arXiv 1912.13445.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies._functional import coordinate_median
from strategies.base import AggregationResult, Aggregator, check_param, is_int, is_real, register_aggregator


@register_aggregator("geomed")
@dataclass(frozen=True, kw_only=True)
class GeoMed(Aggregator):
    """argmin_z sum_i alpha_i max(nu, ||z - U_i||) by smoothed Weiszfeld.

    nu       : smoothing (the paper's nu), avoids division by ~0 distances.
    max_iter : Weiszfeld iterations (the paper reports 3-4 suffice).
    tol      : stop when the relative objective change is below tol.
    scores   : distance of each client to the geometric median.
    """

    nu: float = 1e-6
    max_iter: int = 100
    tol: float = 1e-7

    def validate(self) -> None:
        check_param(is_real(self.nu) and self.nu > 0, "geomed", "nu", self.nu, "a number > 0")
        check_param(is_int(self.max_iter) and self.max_iter >= 1, "geomed", "max_iter", self.max_iter, "an integer >= 1")
        check_param(is_real(self.tol) and self.tol >= 0, "geomed", "tol", self.tol, "a number >= 0")

    def aggregate(self, U, weights, *, generator=None, rows=None):
        z, dist = weiszfeld(U, weights, self.nu, self.max_iter, self.tol)
        return AggregationResult(z, torch.ones(len(U), dtype=torch.bool, device=U.device), dist)


def weiszfeld(U, weights, nu: float, max_iter: int, tol: float):
    a = torch.ones(len(U), dtype=torch.float64, device=U.device) if weights is None else weights.to(torch.float64)
    a = a / a.sum()
    # Start at the coordinate-wise median: the same fixed point as the paper's start at
    # the mean, but a 1e30 client cannot put the start astronomically far away.
    z = coordinate_median(U)
    obj_prev = None
    for _ in range(max_iter):
        dist = torch.linalg.vector_norm(U - z, dim=1, dtype=torch.float64)
        obj = float((a * dist).sum())
        if obj_prev is not None and abs(obj_prev - obj) <= tol * max(obj, 1e-300):
            break
        obj_prev = obj
        beta = a / dist.clamp_min(nu)
        z = ((beta / beta.sum()).to(U.dtype)) @ U
    dist = torch.linalg.vector_norm(U - z, dim=1, dtype=torch.float64)
    return z, dist

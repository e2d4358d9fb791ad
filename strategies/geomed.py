"""Geometric median by the smoothed Weiszfeld algorithm (Robust Federated Aggregation, RFA).

Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning",
IEEE Transactions on Signal Processing 70, 2022, arXiv:1912.13445.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies._functional import coordinate_median, gram64
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_int,
    is_real,
    register_aggregator,
)


@register_aggregator("geomed")
@dataclass(frozen=True, kw_only=True)
class GeoMed(Aggregator):
    """argmin_v sum_i alpha_i max(nu, |v - x_i|) (weights alpha_i = n_i / sum n_j).

    Parameters
    ----------
    nu       : nu, the smoothing parameter (> 0); distances below nu count as nu.
    max_iter : T, the maximum number of Weiszfeld iterations.
    tol      : stop when a step moves v by <= tol x the median client distance to v.

    Every Weiszfeld iterate is a convex combination c^T X of the rows, so the
    iterations run on the n x n Gram matrix of the rows centred on their
    coordinate-wise median and the
    (n, d) matrix is only touched twice. scores = distance of each client to the
    returned median; all clients are accepted.
    """

    name = "geomed"
    nu: float = 1e-6
    max_iter: int = 200
    tol: float = 1e-6

    def validate(self) -> None:
        owner = self.name
        check_param(is_real(self.nu) and self.nu > 0, owner, "nu", self.nu, "a number > 0")
        check_param(is_int(self.max_iter) and self.max_iter >= 1, owner, "max_iter", self.max_iter,
                    "an integer >= 1")
        check_param(is_real(self.tol) and self.tol >= 0, owner, "tol", self.tol, "a number >= 0")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n = U.shape[0]
        alpha = (torch.ones(n, dtype=torch.float64, device=U.device) if weights is None
                 else weights.to(torch.float64))
        alpha = alpha / alpha.sum()
        # centred on the coordinate-wise median: a robust centre keeps the Gram
        # formula precise for the honest rows even next to a 1e30 outlier
        G = gram64(U, coordinate_median(U))
        c = weiszfeld_coefficients(G, alpha, self.nu, self.max_iter, self.tol)
        dist = gram_distances(G, c)
        vector = c.to(U.dtype) @ U  # a convex combination of the rows
        return AggregationResult(
            vector=vector,
            accepted=torch.ones(n, dtype=torch.bool, device=U.device),
            scores=dist,
        )


def gram_distances(G: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """|x_i - c^T X| for all i, from the Gram matrix G = X X^T."""
    Gc = G @ c
    return (G.diagonal() - 2 * Gc + c @ Gc).clamp_min(0).sqrt()


def weiszfeld_coefficients(
    G: torch.Tensor, alpha: torch.Tensor, nu: float, max_iter: int, tol: float
) -> torch.Tensor:
    """Smoothed Weiszfeld: v <- sum_i beta_i x_i / sum_i beta_i, beta_i = alpha_i / max(nu, |v - x_i|),
    started at the weighted mean; returns the coefficients c with v = c^T X.

    Stops when the step |v_new - v| is <= tol * (median distance of the points to v):
    scale- and translation-free, and unlike the objective's relative decrease it
    is not fooled by one huge outlier dominating the objective."""
    c = alpha.clone()
    for _ in range(max_iter):
        dist = gram_distances(G, c)
        beta = alpha / dist.clamp_min(nu)
        c_new = beta / beta.sum()
        dc = c_new - c
        step = float((dc @ (G @ dc)).clamp_min(0).sqrt())
        c = c_new
        if step <= tol * float(dist.median()):
            break
    return c

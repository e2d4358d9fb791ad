"""SEVER: filter the client gradients along their top singular direction.

Diakonikolas, Kamath, Kane, Li, Steinhardt, Stewart, "Sever: A Robust
Meta-Algorithm for Stochastic Optimization", ICML 2019, arXiv:1803.02815.

Guarantee (the paper's main theorem, Section 2): if at the current parameters
the clean functions' gradients have covariance bounded by sigma^2 I and an
eps-fraction of them is replaced arbitrarily, then each filter step removes in
expectation more corrupted than clean points, and Sever run to convergence
returns an O(sigma sqrt(eps))-approximate critical point of the clean
objective (for convex objectives, a point whose excess risk is
O(sigma sqrt(eps)) times the radius of the domain). Applied per round to the
client updates, this is the filter at the (approximate) minimiser that the
paper runs between retrainings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedsec.strategies._functional import coordinate_median, max_abs, top_direction, weighted_mean
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_int,
    is_real,
    register_aggregator,
)


@register_aggregator("sever")
@dataclass(frozen=True, kw_only=True)
class Sever(Aggregator):
    """Repeat ``iterations`` times on the kept clients: centre them on their
    (weighted) mean mu, take the top right singular vector v of the centred
    matrix, score tau_i = <x_i - mu, v>^2 and remove the outliers; return the
    (weighted) mean of the clients left.

    Parameters (exactly one of ``fraction`` / ``threshold``)
    ----------
    fraction   : p, remove the ceil(p k) kept clients with the largest tau per
                 iteration (k = clients still kept), in (0, 0.5); the paper's
                 "remove the p fraction of points with the largest scores".
    threshold  : T, remove the kept clients with tau_i > T * median_kept(tau)
                 (> 0; a scale-free stand-in for the paper's sigma^2-based
                 threshold, which needs a known sigma); an iteration that
                 removes nobody ends the loop.
    iterations : r, the number of filter steps (>= 1).

    At least one client is always kept. accepted = the clients left; scores =
    tau from the last step (over all clients). The random start of the power
    iteration (used when k > d) comes from the call's generator.
    Cost: per iteration one (k, k) eigh (k <= d) or a few block power steps,
    O(k d) each.
    """

    name = "sever"
    fraction: float | None = 0.1
    threshold: float | None = None
    iterations: int = 1

    def validate(self) -> None:
        owner = self.name
        check_param((self.fraction is None) != (self.threshold is None), owner, "fraction/threshold",
                    (self.fraction, self.threshold), "exactly one of fraction or threshold "
                    "(pass fraction=None to use threshold)")
        if self.fraction is not None:
            check_param(is_real(self.fraction) and 0 < self.fraction < 0.5, owner, "fraction",
                        self.fraction, "a number in (0, 0.5)")
        if self.threshold is not None:
            check_param(is_real(self.threshold) and self.threshold > 0, owner, "threshold",
                        self.threshold, "a number > 0")
        check_param(is_int(self.iterations) and self.iterations >= 1, owner, "iterations",
                    self.iterations, "an integer >= 1")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n = U.shape[0]
        kept = torch.ones(n, dtype=torch.bool, device=U.device)
        tau = torch.zeros(n, dtype=torch.float64, device=U.device)
        for _ in range(self.iterations):
            k = int(kept.sum())
            if k <= 1:
                break
            mu = weighted_mean(U, weights, kept)
            tau = projection_scores(U, mu, kept, generator)
            drop = outliers(tau, kept, self.fraction, self.threshold)
            if not bool(drop.any()):
                break
            kept = kept & ~drop
        return AggregationResult(vector=weighted_mean(U, weights, kept), accepted=kept, scores=tau)


def projection_scores(
    U: torch.Tensor, mu: torch.Tensor, kept: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """tau_i = <x_i - mu, v>^2 for all rows (float64), v the top right singular vector
    of the kept rows minus mu. Rows are scaled down first when squares could overflow."""
    Xc = U[kept] - mu
    s = max_abs(Xc)
    s = s if (math.isfinite(s) and s > 1e15) else 1.0
    _, v = top_direction(Xc / s if s != 1.0 else Xc, generator)
    proj = ((U - mu) / s if s != 1.0 else U - mu) @ v
    return (proj.to(torch.float64) * s) ** 2


def outliers(
    tau: torch.Tensor, kept: torch.Tensor, fraction: float | None, threshold: float | None
) -> torch.Tensor:
    """(n,) bool: the kept clients to remove this step, never all of them."""
    k = int(kept.sum())
    cand = torch.where(kept, tau, torch.full_like(tau, -1.0))
    if fraction is not None:
        r = min(k - 1, math.ceil(fraction * k - 1e-9))
        drop = torch.zeros_like(kept)
        if r > 0:
            drop[torch.topk(cand, r).indices] = True
        return drop
    med = coordinate_median(tau[kept][:, None])[0]
    drop = kept & (tau > threshold * med)
    if int(drop.sum()) >= k:  # every kept score above T x median: impossible unless median is 0
        drop[torch.argmin(cand.masked_fill(~kept, float("inf")))] = False
    return drop

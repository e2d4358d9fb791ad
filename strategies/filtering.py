"""Iterative spectral filtering for robust mean estimation.

Diakonikolas, Kamath, Kane, Li, Moitra, Stewart, "Robust Estimators in High
Dimensions without the Computational Intractability", FOCS 2016,
arXiv:1604.06443; and "Being Robust (in High Dimensions) Can Be Practical",
ICML 2017, arXiv:1703.00893.
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
    is_real,
    register_aggregator,
)


@register_aggregator("filtering")
@dataclass(frozen=True, kw_only=True)
class Filtering(Aggregator):
    """Loop: centre the kept updates on their mean; find the top eigenvalue
    lambda and eigenvector v of their empirical covariance (never forming a
    d x d matrix); if lambda <= bound, stop; else drop the kept updates with the
    largest squared projections tau_i = <x_i - mu, v>^2 and repeat, removing at
    most floor(eps * n) updates in total. Return the (weighted) mean of the kept.

    Parameters
    ----------
    eps       : epsilon, the expected fraction of corrupted updates, in [0, 0.5).
    threshold : C, the slack multiplier of the stopping bound.

    The stopping bound is what clean (isotropic, sub-Gaussian) data would give:
        bound = sigma^2 (1 + sqrt(d / k))^2 (1 + C eps),
    where (1 + sqrt(d/k))^2 is the Bai-Yin / Marchenko-Pastur edge of the
    top eigenvalue of a k-sample covariance in d dimensions (it tends to the
    paper's 1 when k >> d, and keeps the rule usable when d >> k as in FL), and
    sigma^2 is estimated robustly ONCE on all finite updates as the median over
    coordinates of (MAD_j / 0.6745)^2 (an eps fraction of outliers moves each
    MAD_j by O(eps)). The paper's randomized/tail-based removal is replaced by a
    deterministic one: each round drops the ceil(floor(eps n) / 4) kept updates
    with the largest tau_i (deterministic and permutation invariant). With
    strongly anisotropic honest updates the bound is conservative and up to
    floor(eps n) honest updates are dropped (like ``spectral``).

    scores = tau_i for every client w.r.t. the final mean and direction.
    The random start of the power iteration (used when k > d) comes from the
    call's generator.
    """

    name = "filtering"
    eps: float = 0.1
    threshold: float = 5.0

    def validate(self) -> None:
        owner = self.name
        check_param(is_real(self.eps) and 0 <= self.eps < 0.5, owner, "eps", self.eps,
                    "a number in [0, 0.5)")
        check_param(is_real(self.threshold) and self.threshold >= 0, owner, "threshold",
                    self.threshold, "a number >= 0")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n, d = U.shape
        sigma2 = robust_coordinate_variance(U)
        max_remove = int(math.floor(self.eps * n + 1e-9))
        step = max(1, math.ceil(max_remove / 4))
        kept = torch.ones(n, dtype=torch.bool, device=U.device)
        removed = 0
        while True:
            mu = weighted_mean(U, weights, kept)
            k = n - removed
            lam, v, tau = _top_projection(U, mu, kept, generator)
            bound = sigma2 * (1 + math.sqrt(d / k)) ** 2 * (1 + self.threshold * self.eps)
            if lam <= bound or removed >= max_remove:
                break
            r = min(step, max_remove - removed)
            cand = torch.where(kept, tau, torch.full_like(tau, -1.0))
            kept[torch.topk(cand, r).indices] = False
            removed += r
        return AggregationResult(vector=mu, accepted=kept, scores=tau)


def robust_coordinate_variance(U: torch.Tensor) -> float:
    """median_j (MAD_j / 0.6745)^2: a clean per-coordinate variance that an
    eps fraction of outliers barely moves."""
    med = coordinate_median(U)
    mad = coordinate_median((U - med).abs()) / 0.6745
    return float(coordinate_median((mad.to(torch.float64) ** 2)[:, None])[0])


def _top_projection(
    U: torch.Tensor, mu: torch.Tensor, kept: torch.Tensor, generator: torch.Generator | None
) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(lambda, v) of the kept rows' covariance and tau_i = <x_i - mu, v>^2 for all rows.

    Rows are scaled by their largest centred entry when squares could overflow
    float32; lambda is scaled back in float64 and tau computed in float64."""
    Xc = U[kept] - mu
    s = max_abs(Xc)
    s = s if (math.isfinite(s) and s > 1e15 and U.dtype == torch.float32) else 1.0
    lam, v = top_direction(Xc / s if s != 1.0 else Xc, generator)
    proj = (U / s if s != 1.0 else U) @ v - (mu / s) @ v
    tau = (proj.to(torch.float64) * s) ** 2
    return lam * s * s, v, tau

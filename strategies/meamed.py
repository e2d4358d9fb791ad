"""Mean around median (Meamed).

Xie, Koyejo, Gupta, "Generalized Byzantine-tolerant SGD", arXiv:1802.10116, 2018
(the "mean-around-median" rule of Definition 3). Cross-checked against ByzFL's
``Meamed`` (LPD-EPFL/byzfl, byzfl/aggregators/aggregators.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies._functional import by_column_blocks, coordinate_median
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_int,
    register_aggregator,
    require_clients,
)


@register_aggregator("meamed")
@dataclass(frozen=True, kw_only=True)
class Meamed(Aggregator):
    """For every coordinate k, average the n - f values closest to that
    coordinate's median:

        [Meamed_f(x_1..x_n)]_k = 1/(n-f) sum_{j=1}^{n-f} [x_{pi_k(j)}]_k,
        |[x_{pi_k(1)}]_k - med_k| <= ... <= |[x_{pi_k(n)}]_k - med_k|,

    with med_k the coordinate-wise median (numpy semantics: the mean of the two
    middle values for even n).

    Parameters
    ----------
    f : f, the number of Byzantine clients tolerated; needs 2f < n (ByzFL's check).

    Ties in the distance to the median are broken towards the smaller value (a
    content rule, so the result does not depend on client order; ByzFL's
    argpartition takes the lower index). Weights are ignored (a coordinate-wise
    order statistic, like ``trimmed_mean``); every client is accepted.
    Cost: one sort of each column, O(d n log n).
    """

    name = "meamed"
    f: int = 0

    def validate(self) -> None:
        check_param(is_int(self.f) and self.f >= 0, self.name, "f", self.f, "an integer >= 0")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n = U.shape[0]
        require_clients(type(self).__name__, n, 2 * self.f + 1, f"2f < n with f={self.f}")
        return AggregationResult(
            vector=mean_around_median(U, self.f),
            accepted=torch.ones(n, dtype=torch.bool, device=U.device),
        )


def mean_around_median(X: torch.Tensor, f: int) -> torch.Tensor:
    """Coordinate-wise mean of the n - f values nearest the coordinate's median."""
    if f == 0:
        return X.mean(dim=0)
    return by_column_blocks(lambda B: _meamed_block(B, f), X)


def _meamed_block(B: torch.Tensor, f: int) -> torch.Tensor:
    """In a sorted column s the distances |s - med| fall then rise, so the k = n - f
    values nearest the median form a window s[a : a + k]. With r* the k-th smallest
    distance, every value closer than r* must be in it and the values at exactly r*
    fill the rest, lower ones first: a = max(lo, q - k), lo = #{values below
    med - r*}, q = the end of the values closer than r* (and of those at r* below med)."""
    n = B.shape[0]
    k = n - f
    s = torch.sort(B, dim=0).values
    med = coordinate_median(B)
    dist = (s - med).abs()
    r = torch.kthvalue(dist, k, dim=0).values
    left = s < med
    lo = ((dist > r) & left).sum(dim=0)
    q = lo + ((dist == r) & left).sum(dim=0) + (dist < r).sum(dim=0)
    a = torch.maximum(lo, q - k)
    idx = a[None, :] + torch.arange(k, device=B.device)[:, None]
    return torch.gather(s, 0, idx).mean(dim=0)

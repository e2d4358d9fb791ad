"""Approximate Tukey (halfspace) median by random projections.

Tukey, "Mathematics and the Picturing of Data", ICM 1975 (halfspace depth and
its median); the random approximation of the depth is Cuesta-Albertos,
Nieto-Reyes, "The random Tukey depth", Computational Statistics & Data Analysis
52(11), 2008. The exact Tukey median is NP-hard in the dimension (Johnson,
Preparata 1978), so only an approximation is practical for model updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies._functional import coordinate_median, gaussian, weighted_mean
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_int,
    register_aggregator,
)

# Directions drawn and projected at once: bounds the (d, chunk) Gaussian block.
_DIRECTION_ELEMS = 1 << 24


@register_aggregator("tukey")
@dataclass(frozen=True, kw_only=True)
class Tukey(Aggregator):
    """The Tukey depth of x in {x_1..x_n} is min over unit u of
    #{i : <u, x_i> >= <u, x>} / n. With m random Gaussian directions u_1..u_m
    (drawn from the call's generator) each client's *random Tukey depth* is

        D_m(x_j) = min_{l <= m} min(#{i : <u_l, x_i> <= <u_l, x_j>},
                                    #{i : <u_l, x_i> >= <u_l, x_j>}) / n,

    an upper bound of the true depth that tightens as m grows. The
    approximate Tukey median is the (weighted) mean of the clients of maximal
    D_m: the deepest sample points, averaged as the Tukey median averages its
    deepest region. An update far out in any sampled direction has depth 1/n.

    Parameters
    ----------
    projections : m, the number of random directions (>= 1).

    Cost: drawing m directions in R^d and projecting, O(m n d) time with the
    directions generated in blocks of at most 2^24 numbers (so memory is
    O(n m + 2^24), not O(m d)); the ranks add O(m n^2). For n = 20,
    d = 4e4, m = 100: 8e7 multiply-adds. Translation equivariant and
    permutation invariant for a fixed generator (the directions live in R^d).
    accepted = the deepest clients; scores = 1 - D_m.
    """

    name = "tukey"
    projections: int = 100

    def validate(self) -> None:
        check_param(is_int(self.projections) and self.projections >= 1, self.name, "projections",
                    self.projections, "an integer >= 1")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        P = random_projections(U, self.projections, generator)
        depth = random_tukey_depth(P)
        deepest = depth == depth.max()
        return AggregationResult(vector=weighted_mean(U, weights, deepest), accepted=deepest,
                                 scores=1 - depth)


def random_projections(U: torch.Tensor, m: int, generator: torch.Generator | None) -> torch.Tensor:
    """(n, m) projections <x_i - med, u_l> on m standard Gaussian directions (their
    norms do not matter for ranks). Centring on the coordinate-wise median changes no
    rank but keeps the honest rows' differences exact next to a huge common offset or
    a 1e30 client (centring on the mean would let that client swamp them)."""
    n, d = U.shape
    X = U - coordinate_median(U)
    chunk = max(1, _DIRECTION_ELEMS // d)
    out = []
    for start in range(0, m, chunk):
        b = min(chunk, m - start)
        out.append(X @ gaussian((d, b), X, generator))
    return torch.cat(out, dim=1)


def random_tukey_depth(P: torch.Tensor) -> torch.Tensor:
    """(n,) float64: min over the columns of P (one direction each) of the
    one-dimensional halfspace depth of each row, divided by n."""
    n = P.shape[0]
    below = (P[None, :, :] <= P[:, None, :]).sum(dim=1)   # (n, m): #{i: p_i <= p_j}
    above = (P[None, :, :] >= P[:, None, :]).sum(dim=1)
    return torch.minimum(below, above).amin(dim=1).to(torch.float64) / n

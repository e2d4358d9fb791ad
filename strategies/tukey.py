"""Approximate Tukey (halfspace) median by random projections.

Tukey, "Mathematics and the Picturing of Data", ICM 1975 (halfspace depth and
its median); the random approximation of the depth is Cuesta-Albertos,
Nieto-Reyes, "The random Tukey depth", Computational Statistics & Data Analysis
52(11), 2008. The exact Tukey median is NP-hard in the dimension (Johnson,
Preparata 1978), so only an approximation is practical for model updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedsec.strategies._functional import coordinate_median, gaussian, max_abs, weighted_mean
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_int,
    register_aggregator,
)

# Gaussian numbers drawn at once for the (d, k) basis: bounds the temporary block.
_DIRECTION_ELEMS = 1 << 24


@register_aggregator("tukey")
@dataclass(frozen=True, kw_only=True)
class Tukey(Aggregator):
    """The Tukey (halfspace) depth of x in {z_1..z_n} is
    min over unit u of #{i : <u, z_i> >= <u, x>} / n, and the Tukey median is
    the centroid of the deepest region. Here:

    1. the updates, centred on their coordinate-wise median, are projected on a
       random k-dimensional subspace: Z = (X - med) B, B a (d, k) standard
       Gaussian matrix from the call's generator;
    2. the depth of each client's z_j is approximated by the *random Tukey
       depth* over m random directions w_1..w_m of R^k:
           D_m(z_j) = min_l min(#{i : <w_l, z_i> <= <w_l, z_j>},
                                #{i : <w_l, z_i> >= <w_l, z_j>}) / n,
       an upper bound of the exact depth of z_j that tightens as m grows;
    3. the output is the (weighted) mean of the clients of maximal D_m (the
       deepest sample points, averaged as the Tukey median averages its
       deepest region).

    Why a subspace: with d >= n (every federation: d ~ 1e4-1e7, n ~ 10-100) the
    n updates are affinely independent, each is a vertex of their hull and has
    exact depth 1/n, and so has every point inside it: the Tukey median of raw
    updates is the whole hull. Random directions of R^d see the same
    degeneracy (each client is extreme along some of them, so every D_m falls
    to 1/n as m grows). In k << n dimensions the depth is informative again,
    and a random projection keeps an update that is far from the others (in
    norm, relative to the honest spread) far from them.

    Parameters
    ----------
    projections : m, the number of random directions in the subspace (>= 1).
    dim         : k, the subspace dimension (>= 1, default 3; k = 1 gives the
                  median of one random projection, which a group can hide in).
                  Needs k < n to be informative.

    Cost: the projection O(n d k) (one (n, d) @ (d, k) product, the Gaussian
    basis drawn in blocks of at most 2^24 numbers) plus O(m n^2) comparisons
    for the depths; for n = 20, d = 4e4, k = 3, m = 100 about 2.4e6 + 4e4
    operations. Translation equivariant and permutation invariant for a fixed
    generator (B and w live in R^d and R^k, never indexed by client).
    accepted = the deepest clients; scores = 1 - D_m.
    """

    name = "tukey"
    projections: int = 100
    dim: int = 3

    def validate(self) -> None:
        owner = self.name
        check_param(is_int(self.projections) and self.projections >= 1, owner, "projections",
                    self.projections, "an integer >= 1")
        check_param(is_int(self.dim) and self.dim >= 1, owner, "dim", self.dim, "an integer >= 1")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        Z = random_subspace(U, self.dim, generator)
        W = gaussian((Z.shape[1], self.projections), Z, generator)
        depth = random_tukey_depth(Z @ W)
        deepest = depth == depth.max()
        return AggregationResult(vector=weighted_mean(U, weights, deepest), accepted=deepest,
                                 scores=1 - depth)


def random_subspace(U: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """(n, k) float64 coordinates (U - med) B of the updates on k random Gaussian
    directions. Centring on the coordinate-wise median changes no depth but keeps
    the honest rows' differences exact next to a huge common offset or a 1e30 client
    (centring on the mean would let that client swamp them)."""
    n, d = U.shape
    X = U - coordinate_median(U)
    s = max_abs(X)
    if math.isfinite(s) and s > 1e15:
        X = X / s  # projections of 1e30-scale rows overflow float32; depth is scale free
    chunk = max(1, _DIRECTION_ELEMS // k)   # rows of B drawn at once
    Z = torch.zeros(n, k, dtype=torch.float64, device=U.device)
    for start in range(0, d, chunk):
        stop = min(d, start + chunk)
        Z += (X[:, start:stop] @ gaussian((stop - start, k), X, generator)).to(torch.float64)
    return Z


def random_tukey_depth(P: torch.Tensor) -> torch.Tensor:
    """(n,) float64: min over the columns of P (one direction each) of the
    one-dimensional halfspace depth of each row, divided by n."""
    n = P.shape[0]
    below = (P[None, :, :] <= P[:, None, :]).sum(dim=1)   # (n, m): #{i: p_i <= p_j}
    above = (P[None, :, :] >= P[:, None, :]).sum(dim=1)
    return torch.minimum(below, above).amin(dim=1).to(torch.float64) / n

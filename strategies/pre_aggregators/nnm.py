"""Nearest-neighbour mixing (NNM).

Allouah, Farhadkhani, Guerraoui, Gupta, Pinot, Stephan, "Fixing by Mixing: A
Recipe for Optimal Byzantine ML under Heterogeneity", AISTATS 2023,
arXiv:2302.01772 (Algorithm 1). Cross-checked against ByzFL's ``NNM``
(LPD-EPFL/byzfl, byzfl/aggregators/preaggregators.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies._functional import coordinate_median, gram64
from fedsec.strategies.base import check_param, is_int
from fedsec.strategies.pre_aggregators.base import PreAggregator, register_pre_aggregator


@register_pre_aggregator("nnm")
@dataclass(frozen=True, kw_only=True)
class NNM(PreAggregator):
    """Replace every update by the average of its n - f nearest neighbours
    (Euclidean, itself included):

        y_i = 1/(n-f) sum_{j in N_i} x_j,   N_i = the n - f closest x_j to x_i.

    Parameters
    ----------
    f : f, the number of Byzantine clients tolerated (0 <= f < n at call time;
        n counts the finite rows).

    Output row i stands for client i: n' = n, weights' = weights. M[i, j] =
    1/(n-f) for j in N_i. Distance ties go to the lower client index (as ByzFL's
    argpartition in practice), the client itself always first.
    Cost: one n x n Gram matrix (O(n^2 d)) and one (n, n) @ (n, d) product.
    """

    name = "nnm"
    f: int = 0

    def validate(self) -> None:
        check_param(is_int(self.f) and self.f >= 0, self.name, "f", self.f, "an integer >= 0")

    def mix(self, X, weights, *, generator=None):
        n = X.shape[0]
        if self.f >= n:
            raise ValueError(f"NNM needs f < n (each update keeps n - f >= 1 neighbours), "
                             f"got f={self.f}, n={n} finite clients")
        M = nnm_matrix(robust_sq_distances(X), n - self.f)
        return M.to(X.dtype) @ X, weights, M


def robust_sq_distances(X: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 squared distances from the Gram matrix of the rows centred on
    their coordinate-wise median: next to a 1e30 row, centring on the mean would
    drown the other rows' distances in rounding error."""
    G = gram64(X, coordinate_median(X))
    sq = G.diagonal()
    D = (sq[:, None] + sq[None, :] - 2 * G).clamp_min(0)
    D = (D + D.T) / 2
    D.fill_diagonal_(0)
    return D


def nnm_matrix(D: torch.Tensor, k: int) -> torch.Tensor:
    """(n, n) float64 mixing matrix: row i has 1/k on the k nearest rows to i
    (itself first, then by distance, ties by index)."""
    n = D.shape[0]
    key = D.clone()
    key.fill_diagonal_(-1.0)
    order = torch.sort(key, dim=1, stable=True).indices[:, :k]
    M = torch.zeros(n, n, dtype=torch.float64, device=D.device)
    M.scatter_(1, order, 1.0 / k)
    return M

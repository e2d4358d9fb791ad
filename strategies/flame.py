"""FLAME.

Nguyen, Rieger, Chen, Yalame, Möllering, Fereidooni, Marchal, Miettinen,
Mirhoseini, Zeitouni, Koushanfar, Sadeghi, Schneider, "FLAME: Taming Backdoors
in Federated Learning", USENIX Security 2022, arXiv 2101.02281.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies._functional import clip_factors, coordinate_median, gaussian, row_norms, weighted_mean
from strategies.base import AggregationResult, Aggregator, check_param, is_real, register_aggregator


@register_aggregator("flame")
@dataclass(frozen=True, kw_only=True)
class Flame(Aggregator):
    """HDBSCAN on pairwise cosine distances (min_cluster_size = n/2 + 1) keeps the
    majority cluster; every kept update is clipped to S_t, the median norm of all
    updates; the average gets Gaussian noise of std lam * S_t.

    lam    : the paper's lambda (noise level factor; 0.001 for image tasks).
    scores : each update's mean cosine distance to the others.
    """

    lam: float = 0.001

    def validate(self) -> None:
        check_param(is_real(self.lam) and self.lam >= 0, "flame", "lam", self.lam, "a number >= 0")

    def aggregate(self, U, weights, *, generator=None, rows=None):
        n = len(U)
        D = cosine_distances(U)
        keep = majority_cluster(D)
        norms = row_norms(U)
        S = coordinate_median(norms[:, None])[0]
        clipped = U * clip_factors(norms, S).to(U.dtype)[:, None]
        v = weighted_mean(clipped, weights, keep)
        if self.lam > 0:
            v = v + float(self.lam * S) * gaussian(tuple(v.shape), v, generator)
        mean_dist = D.sum(dim=1) / max(n - 1, 1)
        return AggregationResult(v, keep, mean_dist)


def cosine_distances(U: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 1 - cos(U_i, U_j) from one Gram matrix."""
    G = (U @ U.T).to(torch.float64)
    nrm = G.diagonal().clamp_min(1e-300).sqrt()
    return (1 - G / nrm[:, None] / nrm[None, :]).clamp(0, 2).fill_diagonal_(0)


def majority_cluster(D: torch.Tensor) -> torch.Tensor:
    """HDBSCAN's largest cluster (all clients if it finds none).

    The one numpy round-trip of the library: sklearn's HDBSCAN is CPU/numpy only,
    and the input is just the n x n distance matrix, so the cost is negligible.
    """
    from sklearn.cluster import HDBSCAN

    n = D.shape[0]
    if n < 3:
        return torch.ones(n, dtype=torch.bool, device=D.device)
    labels = HDBSCAN(min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed", copy=True,
                     allow_single_cluster=True).fit_predict(D.cpu().numpy())
    labels = torch.as_tensor(labels, device=D.device)
    valid = labels[labels >= 0]
    if len(valid) == 0:
        return torch.ones(n, dtype=torch.bool, device=D.device)
    return labels == torch.bincount(valid).argmax()

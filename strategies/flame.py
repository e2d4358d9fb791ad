"""FLAME: clustering, norm clipping and noising against backdoors.

Nguyen, Rieger, Chen, Yalame, Moellering, Fereidooni, Marchal, Miettinen,
Mirhoseini, Zeitouni, Koushanfar, Sadeghi, Schneider, "FLAME: Taming Backdoors
in Federated Learning", USENIX Security 2022, arXiv:2101.02281.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies._functional import (
    clip_factors,
    coordinate_median,
    cosine_matrix,
    gaussian,
    row_norms,
)
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_real,
    register_aggregator,
)


@register_aggregator("flame")
@dataclass(frozen=True, kw_only=True)
class Flame(Aggregator):
    """1. HDBSCAN (min_cluster_size = n//2 + 1, min_samples = 1,
       allow_single_cluster) on the pairwise cosine distances of the updates;
       the largest cluster is admitted, noise points and other clusters are not.
    2. S_t = median of |x_i| over all n clients; admitted updates are clipped to S_t.
    3. Plain average of the clipped admitted updates (the paper averages
       uniformly; weights are ignored) plus N(0, (lambda S_t)^2 I) noise.

    Parameters
    ----------
    lam : lambda, the noise level relative to S_t (the paper's lambda = 0.001
          for image classification); 0 disables the noise.

    With n < 3, or if HDBSCAN labels everything noise, every client is
    admitted (documented fallback: no cluster structure to decide with).
    scores = mean cosine distance of each client to the admitted clients.
    """

    name = "flame"
    lam: float = 0.001

    def validate(self) -> None:
        check_param(is_real(self.lam) and self.lam >= 0, self.name, "lam", self.lam,
                    "a number >= 0")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n, d = U.shape
        norms = row_norms(U)
        C = cosine_distances(U)
        admitted = majority_cluster(C)
        s_t = float(coordinate_median(norms[:, None])[0])
        coef = clip_factors(norms, s_t) * admitted.to(torch.float64)
        vector = (coef / admitted.sum()).to(U.dtype) @ U
        if self.lam > 0 and s_t > 0:
            vector = vector + (self.lam * s_t) * gaussian((d,), vector, generator)
        scores = (C * admitted[None, :]).sum(1) / admitted.sum()
        return AggregationResult(vector=vector, accepted=admitted, scores=scores)


def cosine_distances(U: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 cosine distances 1 - cos(x_i, x_j), exactly symmetric with a zero
    diagonal (zero rows: distance 1 to all others).

    Exact symmetry matters: HDBSCAN(metric="precomputed") raises "The precomputed
    distance matrix is expected to be symmetric" when C and C^T differ by more than
    np.allclose's 1e-9 + 1e-7 |C|, which a float32 Gram matrix of near-parallel
    d ~ 4e4 updates did (issue 19: ~5e-9 asymmetry, a federation died mid-run)."""
    return distances_from_cosines(cosine_matrix(U))


def distances_from_cosines(cos: torch.Tensor) -> torch.Tensor:
    """1 - cos with the diagonal set to 0, symmetrised so the result is exactly symmetric
    whatever ``cos`` is (a consumer-facing guarantee, not an assumption on the input)."""
    C = 1 - (cos + cos.T) / 2
    C.fill_diagonal_(0)
    return C


def majority_cluster(C: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the largest HDBSCAN cluster on the precomputed distance matrix C."""
    n = C.shape[0]
    if n < 3:
        return torch.ones(n, dtype=torch.bool, device=C.device)
    # The one CPU/numpy round-trip of the library: HDBSCAN has no torch
    # implementation, and it only sees the small n x n distance matrix.
    from sklearn.cluster import HDBSCAN

    C = (C + C.T) / 2  # whatever the caller built, HDBSCAN gets an exactly symmetric matrix
    labels = HDBSCAN(
        min_cluster_size=n // 2 + 1, min_samples=1, metric="precomputed", allow_single_cluster=True,
        copy=True,
    ).fit_predict(C.cpu().numpy())
    labels_t = torch.as_tensor(labels, device=C.device)
    clustered = labels_t[labels_t >= 0]
    if clustered.numel() == 0:
        return torch.ones(n, dtype=torch.bool, device=C.device)
    counts = torch.bincount(clustered)
    return labels_t == int(torch.argmax(counts))

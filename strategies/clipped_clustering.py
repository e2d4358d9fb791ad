"""Clipped clustering.

Li, Ngai, Voigt, "An Experimental Study of Byzantine-Robust Aggregation Schemes
in Federated Learning", IEEE Transactions on Big Data, 2023 (Section IV-H),
arXiv:2302.07173. Follows the authors' implementation in Blades
(lishenghui/blades, ``Clippedclustering``): clip to the median of the
historical norms, average-linkage agglomerative clustering into two groups on
cosine distances, average the larger group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fedsec.strategies._functional import clip_factors, coordinate_median, cosine_matrix, row_norms, weighted_mean
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_real,
    register_aggregator,
)


@register_aggregator("clipped_clustering")
@dataclass(frozen=True, kw_only=True)
class ClippedClustering(Aggregator):
    """1. tau = min(median of the norms seen so far, max_tau) (or the fixed ``tau``);
       every update is clipped to norm tau: x_i <- x_i min(1, tau / |x_i|).
    2. Agglomerative clustering with average linkage into two clusters on the
       cosine distances 1 - cos(x_i, x_j) of the clipped updates.
    3. Output: the (weighted) mean of the clipped updates of the larger cluster.

    Parameters
    ----------
    tau     : a fixed clipping norm (> 0), or None (default) for the paper's
              automatic choice, the median of the historical norms.
    max_tau : the cap on the automatic tau (Blades' max_tau = 1e5).
    history : if True (default, as the paper) the median runs over the norms of
              every finite update this rule object has seen (kept in ``state``,
              reset by ``reset()``); if False over this call's norms only.

    Ties in cluster size (even n split in half) go to the cluster with the
    smaller mean intra-cluster distance (the tighter one); with n < 3 there is
    nothing to split and all clients are accepted. The clustering is an exact
    average-linkage agglomeration written in torch (n - 2 merges on the n x n
    matrix, O(n^3) worst case, tested against sklearn's
    AgglomerativeClustering). accepted = the larger cluster; scores = mean
    cosine distance of each client to the accepted clients.
    """

    name = "clipped_clustering"
    tau: float | None = None
    max_tau: float = 1e5
    history: bool = True
    state: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def validate(self) -> None:
        owner = self.name
        check_param(self.tau is None or (is_real(self.tau) and self.tau > 0), owner, "tau", self.tau,
                    "None or a number > 0")
        check_param(is_real(self.max_tau) and self.max_tau > 0, owner, "max_tau", self.max_tau,
                    "a number > 0")
        check_param(isinstance(self.history, bool), owner, "history", self.history, "a bool")

    def reset(self) -> None:
        self.state.clear()

    def clipping_norm(self, norms: torch.Tensor) -> float:
        if self.tau is not None:
            return float(self.tau)
        seen = norms
        if self.history:
            past = self.state.get("norms")
            seen = norms if past is None else torch.cat([past.to(norms.device), norms])
            self.state["norms"] = seen.detach().clone()
        return min(float(coordinate_median(seen[:, None])[0]), float(self.max_tau))

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n = U.shape[0]
        norms = row_norms(U)
        coef = clip_factors(norms, self.clipping_norm(norms))
        X = U * coef.to(U.dtype)[:, None]
        C = 1 - cosine_matrix(X)
        C.fill_diagonal_(0)
        chosen = larger_cluster(C)
        scores = (C * chosen[None, :]).sum(1) / chosen.sum()
        return AggregationResult(vector=weighted_mean(X, weights, chosen), accepted=chosen, scores=scores)


def average_linkage_labels(D: torch.Tensor, k: int = 2) -> torch.Tensor:
    """(n,) cluster labels 0..k-1 from agglomerative clustering with average linkage
    on the symmetric distance matrix D (stop at k clusters). Each step merges the
    closest pair of clusters (first in row-major order on exact ties) and updates
    distances by the Lance-Williams rule d(c, a+b) = (|a| d(c,a) + |b| d(c,b)) / (|a|+|b|).
    Labels are numbered by the smallest member index."""
    n = D.shape[0]
    M = D.to(torch.float64).clone()
    M.fill_diagonal_(math.inf)
    size = torch.ones(n, dtype=torch.float64, device=D.device)
    alive = torch.ones(n, dtype=torch.bool, device=D.device)
    owner = torch.arange(n, device=D.device)          # cluster id of every point
    for _ in range(n - k):
        flat = int(torch.argmin(M))
        a, b = divmod(flat, n)
        a, b = min(a, b), max(a, b)
        merged = (size[a] * M[a] + size[b] * M[b]) / (size[a] + size[b])
        M[a, :] = merged
        M[:, a] = merged
        M[a, a] = math.inf
        M[b, :] = math.inf
        M[:, b] = math.inf
        size[a] += size[b]
        alive[b] = False
        owner = torch.where(owner == b, torch.full_like(owner, a), owner)
    ids = alive.nonzero().squeeze(1)                   # surviving cluster ids, ascending
    return torch.searchsorted(ids, owner)


def larger_cluster(C: torch.Tensor) -> torch.Tensor:
    """(n,) bool: the larger of the two average-linkage clusters of C; on a size tie the
    one with the smaller mean intra-cluster distance."""
    n = C.shape[0]
    if n < 3:
        return torch.ones(n, dtype=torch.bool, device=C.device)
    labels = average_linkage_labels(C, 2)
    sizes = torch.bincount(labels, minlength=2)
    if int(sizes[0]) != int(sizes[1]):
        return labels == int(torch.argmax(sizes))
    spread = [float(C[labels == c][:, labels == c].mean()) for c in (0, 1)]
    return labels == (0 if spread[0] <= spread[1] else 1)

"""Bulyan.

El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed
Learning in Byzantium", ICML 2018, arXiv 1802.07927.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies._functional import (
    argmin_by_content,
    by_column_blocks,
    coordinate_median,
    krum_scores,
    pairwise_sq_distances,
)
from strategies.base import AggregationResult, Aggregator, check_param, is_int, register_aggregator, require_clients


@register_aggregator("bulyan")
@dataclass(frozen=True, kw_only=True)
class Bulyan(Aggregator):
    """Select theta = n - 2f updates by repeated Krum (each pick removed from the set),
    then per coordinate average the beta = theta - 2f values closest to the median of
    the selection. f: tolerated attackers; needs n > 4f + 2 (the paper's n >= 4f + 3).

    iterative : True (the paper): theta successive Krum picks, each on the remaining
        set; False: the theta lowest Krum scores of one ranking (Flower's Bulyan).
    """

    f: int = 0
    iterative: bool = True

    def validate(self) -> None:
        check_param(is_int(self.f) and self.f >= 0, "bulyan", "f", self.f, "an integer >= 0")

    def aggregate(self, U, weights, *, generator=None, rows=None):
        n, f = len(U), self.f
        require_clients("bulyan", n, 4 * f + 3, f"Bulyan needs n >= 4f + 3 with f={f}")
        theta = n - 2 * f
        D = pairwise_sq_distances(U)
        scores = krum_scores(D, n - f - 2)
        selected = torch.zeros(n, dtype=torch.bool, device=U.device)
        if not self.iterative:
            selected[torch.topk(scores, theta, largest=False).indices] = True
        for _ in range(theta if self.iterative else 0):  # Krum on the shrinking set; D computed once
            rest = (~selected).nonzero().squeeze(1)
            k = len(rest)
            s = krum_scores(D[rest][:, rest], max(k - f - 2, 1))
            selected[rest[argmin_by_content(s, U[rest])]] = True
        S = U[selected]
        beta = theta - 2 * f
        vec = by_column_blocks(lambda B: _closest_mean(B, beta), S)
        return AggregationResult(vec, selected, scores)


def _closest_mean(B: torch.Tensor, beta: int) -> torch.Tensor:
    med = coordinate_median(B)
    idx = (B - med).abs().topk(beta, dim=0, largest=False).indices
    return B.gather(0, idx).mean(dim=0)

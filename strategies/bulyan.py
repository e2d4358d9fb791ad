"""Bulyan.

El Mhamdi, Guerraoui, Rouault, "The Hidden Vulnerability of Distributed
Learning in Byzantium", ICML 2018, arXiv:1802.07927.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies._functional import (
    by_column_blocks,
    coordinate_median,
    krum_scores,
    lowest_scores,
    pairwise_sq_distances,
)
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_int,
    register_aggregator,
    require_clients,
)
from fedsec.strategies.multikrum import multikrum_selection


@register_aggregator("bulyan")
@dataclass(frozen=True, kw_only=True)
class Bulyan(Aggregator):
    """Krum-based selection of theta = n - 2f updates, then for every coordinate
    the mean of the beta = theta - 2f selected values closest to their median.

    Parameters
    ----------
    f         : f, the number of Byzantine clients tolerated; needs n >= 4f + 3
                (the paper's condition, also Flower's; it makes beta >= 3).
    iterative : True (the paper): apply Krum theta times, each time on the
                updates not yet selected, with r - f - 2 neighbours for the r
                remaining (at least 1). False (Flower's Bulyan): the theta lowest
                Krum scores computed once on all n updates.

    Weights are ignored (as in Flower). scores = Krum scores on all n updates;
    accepted = the theta selected clients.
    """

    name = "bulyan"
    f: int = 0
    iterative: bool = True

    def validate(self) -> None:
        owner = self.name
        check_param(is_int(self.f) and self.f >= 0, owner, "f", self.f, "an integer >= 0")
        check_param(isinstance(self.iterative, bool), owner, "iterative", self.iterative, "a bool")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n, f = U.shape[0], self.f
        require_clients(type(self).__name__, n, 4 * f + 3, f"n >= 4f + 3 with f={f}")
        theta, beta = n - 2 * f, n - 4 * f
        D = pairwise_sq_distances(U)
        scores = krum_scores(D, max(1, n - f - 2))
        if not self.iterative:
            selected = multikrum_selection(scores, D, theta)
        else:
            selected = iterative_krum_selection(D, f, theta)
        vector = closest_to_median_mean(U[selected], beta)
        return AggregationResult(vector=vector, accepted=selected, scores=scores)


def iterative_krum_selection(D: torch.Tensor, f: int, theta: int) -> torch.Tensor:
    """Select theta rows by repeated Krum on the not-yet-selected rows (a loop over
    the theta selection rounds, each vectorised over all rows)."""
    n = D.shape[0]
    inf = torch.tensor(float("inf"), dtype=D.dtype, device=D.device)
    selected = torch.zeros(n, dtype=torch.bool, device=D.device)
    for t in range(theta):
        r = n - t
        if r == 1:
            selected |= True
            break
        k = min(max(r - f - 2, 1), r - 1)
        excluded = selected[:, None] | selected[None, :]
        Dm = torch.where(excluded, inf, D)
        s = krum_scores(Dm, k)
        s = torch.where(selected, inf, s)
        Dr = torch.where(excluded, torch.zeros_like(D), D)
        selected[int(lowest_scores(s, Dr, 1)[0])] = True
    return selected


def closest_to_median_mean(S: torch.Tensor, beta: int) -> torch.Tensor:
    """Coordinate-wise mean of the beta values of S closest to the coordinate-wise median."""

    def block(B: torch.Tensor) -> torch.Tensor:
        med = coordinate_median(B)
        idx = torch.topk((B - med).abs(), beta, dim=0, largest=False).indices
        return B.gather(0, idx).mean(dim=0)

    return by_column_blocks(block, S)

"""Multi-Krum.

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017, arXiv:1703.02757
(Multi-Krum is defined in Section 4 of the arXiv version).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies._functional import krum_scores, lowest_scores, pairwise_sq_distances, weighted_mean
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_int,
    register_aggregator,
    require_clients,
)


@register_aggregator("multikrum")
@dataclass(frozen=True, kw_only=True)
class MultiKrum(Aggregator):
    """Average the m updates with the lowest Krum scores.

    Parameters
    ----------
    f : f, the number of Byzantine clients tolerated; needs n > 2f + 2.
    m : m, how many updates to average (1 <= m <= n); None means n - f.

    The average is weighted by the example counts when given (as Flower's
    MultiKrum, which averages the selected replies with ``num-examples``).
    scores = Krum scores; accepted = the m selected clients.
    """

    name = "multikrum"
    f: int = 0
    m: int | None = None

    def validate(self) -> None:
        owner = self.name
        check_param(is_int(self.f) and self.f >= 0, owner, "f", self.f, "an integer >= 0")
        check_param(self.m is None or (is_int(self.m) and self.m >= 1), owner, "m", self.m,
                    "None or an integer >= 1")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n = U.shape[0]
        owner = self.name
        require_clients(owner, n, 2 * self.f + 3, f"n > 2f + 2 with f={self.f}")
        m = n - self.f if self.m is None else self.m
        if m > n:
            raise ValueError(f"{owner}: m={m} exceeds the number of finite clients n={n}")
        D = pairwise_sq_distances(U)
        scores = krum_scores(D, n - self.f - 2)
        accepted = multikrum_selection(scores, D, m)
        return AggregationResult(vector=weighted_mean(U, weights, accepted), accepted=accepted,
                                 scores=scores)


def multikrum_selection(scores: torch.Tensor, D: torch.Tensor, m: int) -> torch.Tensor:
    """Boolean mask of the m lowest scores (ties: see ``lowest_scores``)."""
    order = lowest_scores(scores, D, m)
    mask = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    mask[order] = True
    return mask

"""Krum.

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017, arXiv:1703.02757.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies._functional import krum_scores, lowest_scores, pairwise_sq_distances
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_int,
    register_aggregator,
    require_clients,
)


@register_aggregator("krum")
@dataclass(frozen=True, kw_only=True)
class Krum(Aggregator):
    """Return the update x_i* with the lowest Krum score
    s(i) = sum of squared distances to its n - f - 2 nearest other updates.

    Parameters
    ----------
    f : f, the number of Byzantine clients tolerated; needs n > 2f + 2.

    scores = Krum scores; accepted = the selected client only. Weights are
    ignored (the output is one client's update). Exact score ties are broken by the total distance to all others.
    """

    name = "krum"
    f: int = 0

    def validate(self) -> None:
        check_param(is_int(self.f) and self.f >= 0, self.name, "f", self.f, "an integer >= 0")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n = U.shape[0]
        require_clients(type(self).__name__, n, 2 * self.f + 3, f"n > 2f + 2 with f={self.f}")
        D = pairwise_sq_distances(U)
        scores = krum_scores(D, n - self.f - 2)
        i = int(lowest_scores(scores, D, 1)[0])
        accepted = torch.zeros(n, dtype=torch.bool, device=U.device)
        accepted[i] = True
        return AggregationResult(vector=U[i].clone(), accepted=accepted, scores=scores)

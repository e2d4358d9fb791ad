"""Multi-Krum.

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies._functional import krum_scores, pairwise_sq_distances, weighted_mean
from strategies.base import AggregationResult, Aggregator, check_param, is_int, register_aggregator, require_clients


@register_aggregator("multikrum")
@dataclass(frozen=True, kw_only=True)
class MultiKrum(Aggregator):
    """Average the m updates with the lowest Krum scores (weighted by examples).

    f : tolerated attackers (neighbours counted: n - f - 2); needs n > 2f + 2.
    m : updates kept; None = n - f.
    """

    f: int = 0
    m: int | None = None

    def validate(self) -> None:
        check_param(is_int(self.f) and self.f >= 0, "multikrum", "f", self.f, "an integer >= 0")
        check_param(self.m is None or (is_int(self.m) and self.m >= 1), "multikrum", "m", self.m,
                    "None or an integer >= 1")

    def aggregate(self, U, weights, *, generator=None, rows=None):
        n = len(U)
        require_clients("multikrum", n, 2 * self.f + 3, f"Krum needs n > 2f + 2 with f={self.f}")
        m = min(self.m if self.m is not None else n - self.f, n)
        s = krum_scores(pairwise_sq_distances(U), n - self.f - 2)
        keep = torch.zeros(n, dtype=torch.bool, device=U.device)
        keep[torch.topk(s, m, largest=False).indices] = True
        return AggregationResult(weighted_mean(U, weights, keep), keep, s)

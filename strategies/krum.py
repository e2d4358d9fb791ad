"""Krum.

Blanchard, El Mhamdi, Guerraoui, Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies._functional import argmin_by_content, krum_scores, pairwise_sq_distances
from strategies.base import AggregationResult, Aggregator, check_param, is_int, register_aggregator, require_clients


@register_aggregator("krum")
@dataclass(frozen=True, kw_only=True)
class Krum(Aggregator):
    """Pick the update with the smallest sum of squared distances to its n - f - 2
    nearest neighbours (its Krum score). f: tolerated attackers; needs n > 2f + 2.
    scores: the Krum scores (one Gram matrix, no loop over pairs)."""

    f: int = 0

    def validate(self) -> None:
        check_param(is_int(self.f) and self.f >= 0, "krum", "f", self.f, "an integer >= 0")

    def aggregate(self, U, weights, *, generator=None, rows=None):
        n = len(U)
        require_clients("krum", n, 2 * self.f + 3, f"Krum needs n > 2f + 2 with f={self.f}")
        s = krum_scores(pairwise_sq_distances(U), n - self.f - 2)
        best = argmin_by_content(s, U)
        acc = torch.zeros(n, dtype=torch.bool, device=U.device)
        acc[best] = True
        return AggregationResult(U[best].clone(), acc, s)

"""Coordinate-wise median.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018, arXiv 1803.01498.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies._functional import coordinate_median
from strategies.base import AggregationResult, Aggregator, register_aggregator


@register_aggregator("median")
@dataclass(frozen=True, kw_only=True)
class Median(Aggregator):
    """Median of each coordinate over clients (numpy semantics: even n averages the two
    middle values). Unweighted, as in the paper; makes no per-client decision."""

    def aggregate(self, U, weights, *, generator=None, rows=None):
        return AggregationResult(coordinate_median(U), torch.ones(len(U), dtype=torch.bool, device=U.device))

"""Coordinate-wise median.

Yin, Chen, Ramchandran, Bartlett, "Byzantine-Robust Distributed Learning:
Towards Optimal Statistical Rates", ICML 2018, arXiv:1803.01498.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies._functional import coordinate_median
from fedsec.strategies.base import AggregationResult, Aggregator, register_aggregator


@register_aggregator("median")
@dataclass(frozen=True, kw_only=True)
class Median(Aggregator):
    """med{x_i}_j for every coordinate j, with numpy's convention for even n
    (mean of the two middle values; ``torch.median`` returns the lower one).
    Weights are ignored (as in Flower's FedMedian). No hyperparameters."""

    name = "median"

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        return AggregationResult(
            vector=coordinate_median(U),
            accepted=torch.ones(U.shape[0], dtype=torch.bool, device=U.device),
        )

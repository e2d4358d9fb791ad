"""FedAvg: the (example-weighted) mean of the updates.

McMahan, Moore, Ramage, Hampson, Agüera y Arcas, "Communication-Efficient
Learning of Deep Networks from Decentralized Data", AISTATS 2017, arXiv 1602.05629.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies._functional import weighted_mean
from strategies.base import AggregationResult, Aggregator, register_aggregator


@register_aggregator("mean")
@dataclass(frozen=True, kw_only=True)
class Mean(Aggregator):
    """sum_i n_i U_i / sum_i n_i (plain mean when no weights are given); no rejection."""

    def aggregate(self, U, weights, *, generator=None, rows=None):
        return AggregationResult(weighted_mean(U, weights), torch.ones(len(U), dtype=torch.bool, device=U.device))

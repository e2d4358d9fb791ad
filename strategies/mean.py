"""Weighted federated averaging (FedAvg).

McMahan, Moore, Ramage, Hampson, Aguera y Arcas, "Communication-Efficient
Learning of Deep Networks from Decentralized Data", AISTATS 2017,
arXiv:1602.05629. Not robust: a single client can move it arbitrarily.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies._functional import weighted_mean
from fedsec.strategies.base import AggregationResult, Aggregator, register_aggregator


@register_aggregator("mean")
@dataclass(frozen=True, kw_only=True)
class Mean(Aggregator):
    """sum_i n_i x_i / sum_i n_i, with n_i the example counts (``weights``);
    the plain mean when no weights are given. No hyperparameters."""

    name = "mean"

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        return AggregationResult(
            vector=weighted_mean(U, weights),
            accepted=torch.ones(U.shape[0], dtype=torch.bool, device=U.device),
        )

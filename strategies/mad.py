"""Robust z-score (median absolute deviation) outlier rejection.

A classical robust-statistics filter (Hampel, "The Influence Curve and Its Role
in Robust Estimation", JASA 1974; Iglewicz and Hoaglin, "How to Detect and
Handle Outliers", ASQC 1993, for the 0.6745 modified z-score), applied to one
statistic per client update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fedsec.strategies._functional import coordinate_median, robust_z_scores, row_norms, weighted_mean
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_real,
    register_aggregator,
)


@register_aggregator("mad")
@dataclass(frozen=True, kw_only=True)
class MAD(Aggregator):
    """z_i = |s_i - med(s)| / (MAD(s) / 0.6745); reject z_i > threshold; average the rest.

    Parameters
    ----------
    statistic : s_i, "norm" (|x_i|) or "distance_to_median" (|x_i - med(X)|,
                med the coordinate-wise median).
    threshold : the z-score above which a client is rejected (> 0; 3.0 default,
                Iglewicz-Hoaglin use 3.5).

    If MAD = 0 the scale falls back to the mean absolute deviation * sqrt(pi/2),
    and all z are 0 if that is 0 too. The average of the kept clients is
    weighted by example counts when given. scores = the z-scores.
    """

    name = "mad"
    statistic: Literal["norm", "distance_to_median"] = "distance_to_median"
    threshold: float = 3.0

    def validate(self) -> None:
        owner = self.name
        check_param(self.statistic in ("norm", "distance_to_median"), owner, "statistic",
                    self.statistic, "'norm' or 'distance_to_median'")
        check_param(is_real(self.threshold) and self.threshold > 0, owner, "threshold",
                    self.threshold, "a number > 0")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        s = client_statistic(U, self.statistic)
        z = robust_z_scores(s)
        keep = z <= self.threshold
        if not bool(keep.any()):  # only possible for threshold < 0.6745
            keep = z == z.min()
        return AggregationResult(vector=weighted_mean(U, weights, keep), accepted=keep, scores=z)


def client_statistic(U: torch.Tensor, statistic: str) -> torch.Tensor:
    """Per-client statistic s_i (float64)."""
    if statistic == "norm":
        return row_norms(U)
    return row_norms(U - coordinate_median(U))

"""Median-absolute-deviation outlier rejection on a per-client statistic.

Robust z-score |s_i - med(s)| / (MAD(s) / 0.6745) (Hampel, "The influence
curve and its role in robust estimation", JASA 1974; Rousseeuw & Croux 1993),
applied to update statistics as taught with the FL backdoor literature.
"""

from __future__ import annotations

from dataclasses import dataclass

from strategies._functional import coordinate_median, robust_z_scores, row_norms, weighted_mean
from strategies.base import AggregationResult, Aggregator, check_param, is_real, register_aggregator

STATISTICS = ("norm", "distance_to_median")


@register_aggregator("mad")
@dataclass(frozen=True, kw_only=True)
class MAD(Aggregator):
    """Reject clients whose robust z-score exceeds ``threshold``, average the rest.

    statistic : "norm" (||U_i||) or "distance_to_median" (||U_i - median(U)||).
    threshold : z above which a client is rejected (3.0: ~0.3% false rejections
                for normal statistics).
    scores    : the z-scores.
    """

    statistic: str = "distance_to_median"
    threshold: float = 3.0

    def validate(self) -> None:
        check_param(self.statistic in STATISTICS, "mad", "statistic", self.statistic, f"one of {STATISTICS}")
        check_param(is_real(self.threshold) and self.threshold > 0, "mad", "threshold", self.threshold, "a number > 0")

    def aggregate(self, U, weights, *, generator=None, rows=None):
        s = row_norms(U) if self.statistic == "norm" else row_norms(U - coordinate_median(U))
        z = robust_z_scores(s)
        keep = z <= self.threshold
        return AggregationResult(weighted_mean(U, weights, keep), keep, z)

"""Centered clipping.

Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
Optimization", ICML 2021, arXiv 2012.10333.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies._functional import clip_factors, coordinate_median, row_norms
from strategies.base import AggregationResult, Aggregator, check_param, is_int, is_real, register_aggregator


@register_aggregator("centered_clip")
@dataclass(frozen=True, kw_only=True)
class CenteredClip(Aggregator):
    """v <- v + mean_i (U_i - v) min(1, tau / ||U_i - v||), repeated ``iters`` (L) times.

    The paper starts from the previous round's aggregate (server momentum); a
    stateless rule has none, so v starts at the coordinate-wise median.
    tau : clipping radius; None = the median distance of the updates to the start.
    scores : final distance of each update to v.
    """

    tau: float | None = None
    iters: int = 3

    def validate(self) -> None:
        check_param(self.tau is None or (is_real(self.tau) and self.tau > 0), "centered_clip", "tau",
                    self.tau, "None or a number > 0")
        check_param(is_int(self.iters) and self.iters >= 1, "centered_clip", "iters", self.iters, "an integer >= 1")

    def aggregate(self, U, weights, *, generator=None, rows=None):
        v = coordinate_median(U)
        tau = self.tau
        if tau is None:
            tau = float(coordinate_median(row_norms(U - v)[:, None])[0])
        for _ in range(self.iters):
            diff = U - v
            c = clip_factors(row_norms(diff), tau).to(U.dtype)
            v = v + (c[:, None] * diff).mean(dim=0)
        return AggregationResult(v, torch.ones(len(U), dtype=torch.bool, device=U.device), row_norms(U - v))

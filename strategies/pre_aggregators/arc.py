"""Adaptive robust clipping (ARC).

Allouah, Guerraoui, Gupta, Jellouli, Rizk, Stephan, "The Vital Role of Gradient
Clipping in Byzantine-Resilient Distributed Learning", 2024, arXiv:2405.14432
(Algorithm 1). Cross-checked against ByzFL's ``ARC`` (LPD-EPFL/byzfl).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies._functional import clip_factors, row_norms
from fedsec.strategies.base import check_param, is_int
from fedsec.strategies.pre_aggregators.base import PreAggregator, register_pre_aggregator


@register_pre_aggregator("arc")
@dataclass(frozen=True, kw_only=True)
class ARC(PreAggregator):
    """Clip the k = floor(2 (f/n) (n - f)) largest updates to the norm of the
    largest remaining one:

        C = |x_{pi(n-k)}|  (norms sorted ascending),   y_i = min(1, C / |x_i|) x_i.

    Parameters
    ----------
    f : f, the number of Byzantine clients tolerated (>= 0); n counts the finite
        rows at call time. k is computed in integer arithmetic and is 0 when
        f = 0 or f >= n (nothing clipped).

    Output row i is client i: n' = n, weights' = weights, M = diag(min(1, C/|x_i|)).
    Cost: the n norms and one sort of them.
    """

    name = "arc"
    f: int = 0

    def validate(self) -> None:
        check_param(is_int(self.f) and self.f >= 0, self.name, "f", self.f, "an integer >= 0")

    def mix(self, X, weights, *, generator=None):
        norms = row_norms(X)
        c = arc_factors(norms, self.f)
        return X * c.to(X.dtype)[:, None], weights, torch.diag(c)


def clipped_count(n: int, f: int) -> int:
    """k = floor(2 f (n - f) / n), in [0, n - 1]."""
    return min(max(0, (2 * f * (n - f)) // n), n - 1)


def arc_factors(norms: torch.Tensor, f: int) -> torch.Tensor:
    """(n,) float64 clipping factors min(1, C / |x_i|), C the (n-k)-th smallest norm."""
    n = norms.shape[0]
    k = clipped_count(n, f)
    if k == 0:
        return torch.ones(n, dtype=torch.float64, device=norms.device)
    C = torch.sort(norms).values[n - k - 1]
    return clip_factors(norms, C)

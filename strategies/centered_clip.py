"""Centered clipping.

Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust
Optimization", ICML 2021, arXiv:2012.10333.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from fedsec.strategies._functional import coordinate_median, gram64
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_int,
    is_real,
    register_aggregator,
)


@register_aggregator("centered_clip")
@dataclass(frozen=True, kw_only=True)
class CenteredClip(Aggregator):
    """Iterate v <- v + sum_i alpha_i (x_i - v) min(1, tau / |x_i - v|), L times.

    Parameters
    ----------
    tau   : tau, the clipping radius, in the units of the update norms (> 0;
            task dependent, tune it to a few times the honest spread).
    iters : L, the number of clipping iterations (the paper uses L = 1 with
            momentum; more iterations are needed from a cold start).
    start : where v starts. "median" (default): the coordinate-wise median of
            the updates, a robust stateless start, used every call. "previous":
            the paper's choice, the previous aggregate (the server momentum);
            kept in ``state`` (a mutable dict, not part of the frozen
            hyperparameters) and the median is used on the first call or when
            d changes; ``reset()`` forgets it.

    alpha_i = n_i / sum n_j with example counts, else 1/n. All clients are
    accepted; scores = final distance |x_i - v| of each client to the output.
    Iterations run on the n x n Gram matrix of the rows centred on the start v0
    (v stays in v0 + span of the centred rows), so the (n, d) matrix is only
    read twice.
    """

    name = "centered_clip"
    tau: float = 10.0
    iters: int = 5
    start: Literal["median", "previous"] = "median"
    state: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def validate(self) -> None:
        owner = self.name
        check_param(is_real(self.tau) and self.tau > 0, owner, "tau", self.tau, "a number > 0")
        check_param(is_int(self.iters) and self.iters >= 1, owner, "iters", self.iters,
                    "an integer >= 1")
        check_param(self.start in ("median", "previous"), owner, "start", self.start,
                    "'median' or 'previous'")

    def reset(self) -> None:
        self.state.clear()

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n, d = U.shape
        prev = self.state.get("v")
        if self.start == "previous" and prev is not None and prev.shape == (d,):
            v0 = prev.to(device=U.device, dtype=U.dtype)
        else:
            v0 = coordinate_median(U)
        alpha = (torch.ones(n, dtype=torch.float64, device=U.device) if weights is None
                 else weights.to(torch.float64))
        alpha = alpha / alpha.sum()
        H = gram64(U, v0)
        c = centered_clip_coefficients(H, alpha, self.tau, self.iters)
        vector = v0 * (1 - c.sum()).to(U.dtype) + c.to(U.dtype) @ U  # v0 + c^T (U - v0)
        if self.start == "previous":
            self.state["v"] = vector.detach().clone()
        return AggregationResult(
            vector=vector,
            accepted=torch.ones(n, dtype=torch.bool, device=U.device),
            scores=_distances(H, c),
        )


def _distances(H: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """|y_i - c^T Y| from H = Y Y^T."""
    Hc = H @ c
    return (H.diagonal() - 2 * Hc + c @ Hc).clamp_min(0).sqrt()


def centered_clip_coefficients(
    H: torch.Tensor, alpha: torch.Tensor, tau: float, iters: int
) -> torch.Tensor:
    """Coefficients c with v - v0 = c^T Y after ``iters`` centred-clipping steps:
    c <- c (1 - sum_i alpha_i s_i) + alpha * s, s_i = min(1, tau / |y_i - c^T Y|)."""
    c = torch.zeros_like(alpha)
    for _ in range(iters):
        dist = _distances(H, c)
        s = torch.where(dist > tau, tau / dist.clamp_min(1e-300), torch.ones_like(dist))
        a = alpha * s
        c = c * (1 - a.sum()) + a
    return c

"""The ``PreAggregator`` contract: maps the update matrix U (n, d) to U' (n', d)
before any aggregation rule (NNM, Bucketing, ARC), and says where each output
row came from.

    pre = get_pre_aggregator("nnm", f=2)
    out = pre(U, weights=w, generator=g)   # out.U (n', d), out.weights (n',) | None, out.M (n', n)

``M`` is the linear map itself: ``out.U == M @ U`` over the finite rows, so
``M[r, j] != 0`` says that output row r holds (a share of) input client j.
Rows of U with a NaN/inf are dropped BEFORE mixing (mixing would spread the NaN
to every row it touches): their columns of M are zero, so they reach no output
row. ``U`` is never modified; half precision is computed in float32; outputs
stay on U's device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedsec.registry import Registry
from fedsec.validation import KeywordOnly
from fedsec.strategies.base import _check_updates, _check_weights, finite_rows

PRE_AGGREGATORS: Registry = Registry("pre-aggregator")
register_pre_aggregator = PRE_AGGREGATORS.register


def get_pre_aggregator(name: str, **params: Any) -> PreAggregator:
    """Build the pre-aggregator registered as ``name`` with hyperparameters ``params``."""
    return PRE_AGGREGATORS.get(name)(**params)


@dataclass(frozen=True)
class PreAggregation:
    """What a pre-aggregator returns.

    U       : (n', d) the mixed/clipped updates, U's dtype (float32 for half input).
    weights : (n',) the example counts of the output rows, or None when none were given.
    M       : (n', n) float64, U' = M @ U over the finite input rows (zero columns for
              the dropped non-finite rows).
    """

    U: torch.Tensor
    weights: torch.Tensor | None
    M: torch.Tensor


@dataclass(frozen=True, kw_only=True)
class PreAggregator(KeywordOnly):
    """Base class of the pre-aggregators: frozen keyword-only dataclasses that
    validate their hyperparameters (``validate``) and implement ``mix`` on the
    finite rows."""

    name: ClassVar[str] = ""

    def __call__(
        self,
        U: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> PreAggregation:
        owner = type(self).__name__
        X = _check_updates(owner, U)
        n = X.shape[0]
        w = _check_weights(owner, weights, n, X)
        finite = finite_rows(X)
        if not bool(finite.any()):
            raise ValueError(f"{owner}: no finite client update left (all {n} rows contain NaN/inf)")
        rows = finite.nonzero().squeeze(1)
        if len(rows) < n:
            X = X.index_select(0, rows)
            w = None if w is None else w.index_select(0, rows)
        Up, wp, Mk = self.mix(X, w, generator=generator)
        M = torch.zeros(Mk.shape[0], n, dtype=torch.float64, device=X.device)
        M[:, rows] = Mk.to(torch.float64)
        return PreAggregation(U=Up, weights=wp, M=M)

    def mix(
        self, X: torch.Tensor, weights: torch.Tensor | None, *, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Map the k finite rows X (k, d) to (U' (k', d), weights' (k',) or None, M (k', k))
        with U' = M @ X."""
        raise NotImplementedError

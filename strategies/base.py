"""The ``Aggregator`` contract shared by every robust aggregation rule.

A rule is a frozen, keyword-only dataclass whose constructor validates its
hyperparameters. Calling it on the update matrix ``U`` (n clients x d
coordinates) returns an :class:`AggregationResult`. The base ``__call__`` does
the work common to all rules exactly once:

* checks that ``U`` is a 2-D floating tensor and that ``weights`` is ``(n,)``,
  finite and non-negative;
* drops every client whose row holds a NaN/inf: such a client is never
  accepted, gets score ``+inf`` and never touches the output;
* hands the finite rows to the subclass's ``aggregate`` and scatters its
  per-client ``accepted``/``scores`` back to all ``n`` clients.

``U`` is never modified in place. Half precision inputs are computed in
float32; float64 inputs are computed in float64; the returned vector is
always float32 on ``U``'s device.

Rules that need the server's own update (FLTrust's root-set update) set the
class variable ``needs_reference = True``: their ``__call__`` then requires
``reference``, a finite (d,) tensor (a clear ValueError otherwise), and hands
it to ``aggregate(..., reference=...)`` on U's device and dtype. Every other
rule accepts ``reference`` and ignores it, so a server (or a composition of
pre-aggregators) may pass it to any rule; their ``aggregate`` never sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fedsec.registry import Registry
from fedsec.validation import KeywordOnly, check

AGGREGATORS: Registry = Registry("aggregation rule")
register_aggregator = AGGREGATORS.register


def get_aggregator(name: str, **params: Any) -> Aggregator:
    """Build the rule registered as ``name`` with hyperparameters ``params``."""
    return AGGREGATORS.get(name)(**params)


@dataclass(frozen=True)
class AggregationResult:
    """What a rule returns.

    vector   : (d,) float32 on U's device, the aggregated update.
    accepted : (n,) bool, clients whose update was used.
    scores   : (n,) float32 per-client suspicion (higher = more suspect) or None.
    """

    vector: torch.Tensor
    accepted: torch.Tensor
    scores: torch.Tensor | None = None


def check_param(ok: bool, owner: str, name: str, value: object, expected: str) -> None:
    """Raise ``ValueError("owner.name: got value, expected ...")`` (fedsec.validation's one style)."""
    check(ok, f"{owner}.{name}", value, expected)


def is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def require_clients(owner: str, n: int, need: int, why: str) -> None:
    """Raise ``ValueError`` when fewer than ``need`` finite client updates are left."""
    if n < need:
        raise ValueError(
            f"{owner} needs {why} (at least {need} finite client updates), got n={n}"
        )


@dataclass(frozen=True, kw_only=True)
class Aggregator(KeywordOnly):
    """Base class of the aggregation rules (see the module docstring).

    Subclasses are ``@dataclass(frozen=True, kw_only=True)``, override
    :meth:`validate` (called after construction) and :meth:`aggregate`.
    """

    name: ClassVar[str] = ""
    #: True for rules whose ``aggregate`` takes ``reference`` (the server's own update).
    needs_reference: ClassVar[bool] = False

    # -- the common work -------------------------------------------------------------
    def __call__(
        self,
        U: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        reference: torch.Tensor | None = None,
    ) -> AggregationResult:
        X = _check_updates(type(self).__name__, U)
        n = X.shape[0]
        w = _check_weights(type(self).__name__, weights, n, X)
        finite = finite_rows(X)
        n_ok = int(finite.sum())
        if n_ok == 0:
            raise ValueError(
                f"{type(self).__name__}: no finite client update left (all {n} rows contain NaN/inf)"
            )
        rows = None
        if n_ok < n:
            rows = finite.nonzero().squeeze(1)
            X = X.index_select(0, rows)
            w = None if w is None else w.index_select(0, rows)
        if w is not None and not bool(w.sum() > 0):
            raise ValueError(f"{type(self).__name__}: the weights of the finite clients sum to 0")
        extra = {}
        if self.needs_reference:
            extra["reference"] = _check_reference(type(self).__name__, reference, X)
        res = self.aggregate(X, w, generator=generator, rows=rows, **extra)
        vector = res.vector.to(dtype=torch.float32, device=U.device)
        accepted = res.accepted.to(dtype=torch.bool, device=U.device)
        scores = None if res.scores is None else res.scores.to(dtype=torch.float32, device=U.device)
        if rows is not None:
            acc_full = torch.zeros(n, dtype=torch.bool, device=U.device)
            acc_full[rows] = accepted
            accepted = acc_full
            if scores is not None:
                sc_full = torch.full((n,), float("inf"), dtype=torch.float32, device=U.device)
                sc_full[rows] = scores
                scores = sc_full
        return AggregationResult(vector=vector, accepted=accepted, scores=scores)

    def aggregate(
        self,
        U: torch.Tensor,
        weights: torch.Tensor | None,
        *,
        generator: torch.Generator | None = None,
        rows: torch.Tensor | None = None,
    ) -> AggregationResult:
        """Aggregate the finite rows ``U`` (k, d) with optional weights (k,).

        ``rows`` gives the indices of these rows in the caller's full matrix
        (None when every row was finite); only stateful rules need it.
        ``accepted``/``scores`` of the result are over the k rows. Rules with
        ``needs_reference = True`` also receive ``reference`` ((d,), finite,
        on U's device and dtype) as a keyword.
        """
        raise NotImplementedError


def _check_updates(owner: str, U: object) -> torch.Tensor:
    if not isinstance(U, torch.Tensor):
        raise TypeError(f"{owner}: U must be a torch.Tensor of shape (n, d), got {type(U).__name__}")
    if U.ndim != 2:
        raise ValueError(f"{owner}: U must be 2-D (n clients, d coordinates), got shape {tuple(U.shape)}")
    if not U.is_floating_point():
        raise TypeError(f"{owner}: U must be a floating tensor, got dtype {U.dtype}")
    if U.shape[0] == 0 or U.shape[1] == 0:
        raise ValueError(f"{owner}: U must have at least one client and one coordinate, got {tuple(U.shape)}")
    if U.dtype not in (torch.float32, torch.float64):
        U = U.to(torch.float32)
    return U


def _check_weights(owner: str, weights: object, n: int, X: torch.Tensor) -> torch.Tensor | None:
    if weights is None:
        return None
    w = torch.as_tensor(weights, device=X.device)
    if w.shape != (n,):
        raise ValueError(f"{owner}: weights must have shape ({n},) to match U, got {tuple(w.shape)}")
    w = w.to(X.dtype)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"{owner}: weights must be finite and >= 0, got {w.tolist()}")
    return w


def _check_reference(owner: str, reference: object, X: torch.Tensor) -> torch.Tensor:
    d = X.shape[1]
    if reference is None:
        raise ValueError(
            f"{owner} needs reference: the server's own update on its root dataset, a ({d},) "
            "tensor passed as rule(U, reference=g0); got None"
        )
    if not isinstance(reference, torch.Tensor):
        raise TypeError(f"{owner}: reference must be a torch.Tensor of shape ({d},), "
                        f"got {type(reference).__name__}")
    if reference.shape != (d,):
        raise ValueError(f"{owner}: reference must have shape ({d},) to match U, got {tuple(reference.shape)}")
    if not reference.is_floating_point():
        raise TypeError(f"{owner}: reference must be a floating tensor, got dtype {reference.dtype}")
    r = reference.to(device=X.device, dtype=X.dtype)
    if not bool(torch.isfinite(r).all()):
        raise ValueError(f"{owner}: reference (the server's update) must be finite; it holds NaN/inf")
    return r


def finite_rows(X: torch.Tensor) -> torch.Tensor:
    """(n,) bool: rows of X without NaN/inf.

    A row holding NaN or inf has a non-finite sum, so only rows whose sum is not
    finite (those, or finite rows whose sum overflowed) need the exact check; the
    row sums stream through X once without the (n, d) mask torch.isfinite builds,
    which cost more than the whole FedAvg it guards.
    """
    finite = torch.isfinite(X.sum(dim=1))
    suspect = (~finite).nonzero().squeeze(1)
    if suspect.numel():
        finite[suspect] = torch.isfinite(X.index_select(0, suspect)).all(dim=1)
    return finite

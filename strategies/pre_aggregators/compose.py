"""``compose(pre_aggregators, rule)``: pre-aggregators applied in order, then a rule,
with the rule's per-row decisions mapped back to the original clients.

    rule = compose([get_pre_aggregator("nnm", f=2)], get_aggregator("krum", f=2))
    out = rule(U, weights=w, generator=g)        # out.accepted, out.scores: (n,), as any rule

The scenario field ``server.pre_aggregators = [{name = "nnm", ...}, ...]`` builds
exactly this (wired by the server).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fedsec.strategies.base import AggregationResult, Aggregator, _check_updates
from fedsec.strategies.pre_aggregators.base import PreAggregator


@dataclass(frozen=True)
class Composed:
    """An ``Aggregator``-compatible callable: ``pre[0]``, ..., ``pre[-1]``, then ``rule``.

    ``__call__(U, weights=None, *, generator=None, reference=None)`` returns an
    :class:`AggregationResult` over the ORIGINAL n clients. The one generator is
    used by each stage in turn (so a seed fixes the whole chain), and
    ``reference`` goes to the rule unchanged (rules that do not need it ignore it).

    With M = M_k ... M_1 the (n', n) product of the stages' matrices (so U' = M U):

    * accepted[j] = True iff some output row r accepted by the rule has M[r, j] != 0
      (the client contributed to an update the rule used);
    * scores[j] = sum_r |M[r, j]| s_r / sum_r |M[r, j]|, the membership-weighted mean
      of the scores of the output rows that hold client j (with bucketing, the score
      of its bucket; with NNM, the mean over the neighbourhoods it belongs to);
      +inf for a client in no output row (a non-finite input row, dropped before
      mixing) or in a row the rule scored +inf; None when the rule gives no scores.
    """

    pre: tuple[PreAggregator, ...]
    rule: Aggregator

    @property
    def name(self) -> str:
        return "+".join([p.name for p in self.pre] + [getattr(self.rule, "name", type(self.rule).__name__)])

    @property
    def needs_reference(self) -> bool:
        return bool(getattr(self.rule, "needs_reference", False))

    def __call__(
        self,
        U: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        reference: torch.Tensor | None = None,
    ) -> AggregationResult:
        n = _check_updates(type(self).__name__, U).shape[0]
        X, w, M = U, weights, None
        for stage in self.pre:
            out = stage(X, weights=w, generator=generator)
            X, w = out.U, out.weights
            M = out.M if M is None else out.M @ M
        kwargs: dict[str, Any] = {"generator": generator}
        if reference is not None:
            kwargs["reference"] = reference
        res = self.rule(X, weights=w, **kwargs)
        if M is None:
            return res
        accepted, scores = map_back(M.to(U.device), res.accepted.to(U.device),
                                    None if res.scores is None else res.scores.to(U.device))
        return AggregationResult(vector=res.vector, accepted=accepted, scores=scores)


def map_back(
    M: torch.Tensor, accepted: torch.Tensor, scores: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-client (accepted (n,), scores (n,) or None) from per-row results and M (n', n)."""
    member = M != 0
    acc = (member & accepted[:, None]).any(dim=0)
    if scores is None:
        return acc, None
    A = M.abs()
    mass = A.sum(dim=0)
    s = scores.to(torch.float64)
    finite = torch.isfinite(s)
    weighted = (A * torch.where(finite, s, torch.zeros_like(s))[:, None]).sum(dim=0)
    # a client sharing a row the rule scored +inf (or in no row at all) gets +inf
    touches_inf = (member & ~finite[:, None]).any(dim=0)
    out = torch.where(mass > 0, weighted / mass.clamp_min(1e-300), torch.full_like(mass, float("inf")))
    out = torch.where(touches_inf, torch.full_like(out, float("inf")), out)
    return acc, out.to(torch.float32)


def compose(pre_aggregators: list | tuple, rule: Any) -> Composed:
    """The callable that applies ``pre_aggregators`` in order, then ``rule`` (see :class:`Composed`)."""
    if not isinstance(pre_aggregators, (list, tuple)):
        raise TypeError(f"compose: pre_aggregators must be a list of PreAggregator, "
                        f"got {type(pre_aggregators).__name__}")
    for i, p in enumerate(pre_aggregators):
        if not isinstance(p, PreAggregator):
            raise TypeError(f"compose: pre_aggregators[{i}] must be a PreAggregator "
                            f"(from get_pre_aggregator), got {type(p).__name__}")
    if not callable(rule):
        raise TypeError(f"compose: rule must be an Aggregator (from get_aggregator), got {type(rule).__name__}")
    return Composed(pre=tuple(pre_aggregators), rule=rule)

"""FoolsGold: down-weighting sybils by the similarity of their updates.

Fung, Yoon, Beschastnikh, "The Limitations of Federated Learning in Sybil
Settings", RAID 2020, arXiv:1808.04866.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fedsec.strategies._functional import cosine_matrix
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_real,
    register_aggregator,
)


@register_aggregator("foolsgold")
@dataclass(frozen=True, kw_only=True)
class FoolsGold(Aggregator):
    """Per-client weights alpha_i from the pairwise cosine similarities cs_ij of
    the clients' (historical) updates (Algorithm 1 of the paper):

        cs <- cs - I   (the authors' code: the diagonal becomes 0, so every
                        row maximum below is >= 0)
        v_i = max_j cs_ij                       (>= 0)
        pardoning: cs_ij <- cs_ij * v_i / v_j  for j != i with v_i < v_j
        alpha_i = 1 - max_j cs_ij, clipped to [0, 1], divided by max_j alpha_j
        alpha_i = 0.99 where alpha_i = 1
        alpha_i = kappa (ln(alpha_i / (1 - alpha_i)) + 0.5), clipped to [0, 1]

    This matches the authors' reference (DistributedML/FoolsGold,
    deep-fg/fg/foolsgold.py). A client whose best similarity to the others is
    negative is unlike everyone, so by FoolsGold's logic not a sybil: v_i = 0,
    its row is pardoned to 0 and it gets alpha = 1 (before issue 19 its
    negative v_i flipped the sign of the pardoned similarities and gave it 0).

    and the output is sum_i alpha_i x_i / sum_i alpha_i (the paper scales each
    client's learning rate by alpha_i; here the alphas are normalised so the
    output is an average). If every alpha is 0 (all clients look like sybils of
    one another) the output is the zero update and nobody is accepted.
    Example counts are ignored, as in the paper.

    Parameters
    ----------
    kappa   : kappa, the confidence parameter of the logit (> 0; paper: 1).
    history : if True, similarities use each client's accumulated updates H_i
              (sum over the calls of this rule object), as in the paper. History is
              keyed by the ROW INDEX of U, so it assumes the same clients in the
              same row order every round (full participation, rows sorted by
              client id); it is kept in ``state`` (a mutable dict outside the
              frozen hyperparameters), grown when a new row index appears, reset when d changes and by
              ``reset()``. If False (default), only this round's updates are used
              and the rule is stateless.

    accepted = alpha_i > 0; scores = 1 - alpha_i.
    """

    name = "foolsgold"
    kappa: float = 1.0
    history: bool = False
    state: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def validate(self) -> None:
        owner = self.name
        check_param(is_real(self.kappa) and self.kappa > 0, owner, "kappa", self.kappa, "a number > 0")
        check_param(isinstance(self.history, bool), owner, "history", self.history, "a bool")

    def reset(self) -> None:
        self.state.clear()

    def _accumulate(self, U: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Add U's rows to the history rows ``idx``; return those history rows."""
        d = U.shape[1]
        n_total = int(idx.max()) + 1
        hist = self.state.get("H")
        if hist is None or hist.shape[1] != d or hist.device != U.device or hist.dtype != U.dtype:
            hist = torch.zeros(n_total, d, dtype=U.dtype, device=U.device)
        elif hist.shape[0] < n_total:
            hist = torch.cat([hist, hist.new_zeros(n_total - hist.shape[0], d)])
        hist = hist.index_add(0, idx, U)
        self.state["H"] = hist
        return hist.index_select(0, idx)

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        k, d = U.shape
        H = U
        if self.history:
            idx = torch.arange(k, device=U.device) if rows is None else rows
            H = self._accumulate(U, idx)
        alpha = foolsgold_weights(cosine_similarities(H), self.kappa)
        total = alpha.sum()
        if bool(total > 0):
            vector = (alpha / total).to(U.dtype) @ U
        else:
            vector = torch.zeros(d, dtype=U.dtype, device=U.device)
        return AggregationResult(vector=vector, accepted=alpha > 0, scores=1 - alpha)


def cosine_similarities(X: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 cosine similarities, exactly symmetric (0 for zero rows, also
    on the diagonal, as sklearn's cosine_similarity)."""
    return cosine_matrix(X)


def foolsgold_weights(cs: torch.Tensor, kappa: float) -> torch.Tensor:
    """FoolsGold's alpha (float64, in [0, 1]) from the cosine-similarity matrix ``cs``
    (the authors' foolsgold(): similarity minus identity, pardoning, logit)."""
    n = cs.shape[0]
    cs = cs - torch.eye(n, dtype=cs.dtype, device=cs.device)
    v = cs.amax(dim=1)
    pardon = pardoning_factors(v)
    alpha = (1 - (cs * pardon).amax(dim=1)).clamp(0, 1)
    return logit_weights(alpha, kappa)


def pardoning_factors(v: torch.Tensor) -> torch.Tensor:
    """(n, n): v_i / v_j where v_i < v_j (then v_j > v_i >= 0), else 1 (diagonal included)."""
    lower = v[:, None] < v[None, :]
    return torch.where(lower, v[:, None] / v[None, :].clamp_min(1e-300), torch.ones(
        (v.shape[0], v.shape[0]), dtype=v.dtype, device=v.device))


def logit_weights(alpha: torch.Tensor, kappa: float) -> torch.Tensor:
    """Rescale so max alpha = 1, cap at 0.99, kappa (logit + 0.5) clipped to [0, 1].
    All-zero alphas (everyone a sybil of everyone) give all-zero weights (the
    reference would divide by zero)."""
    top = alpha.max()
    if not bool(top > 0):
        return torch.zeros_like(alpha)
    alpha = alpha / top
    alpha = torch.where(alpha >= 1, torch.full_like(alpha, 0.99), alpha)
    logit = kappa * (torch.log(alpha / (1 - alpha)) + 0.5)
    # log(0) = -inf -> weight 0, as the reference's final clipping
    logit = torch.nan_to_num(logit, nan=0.0, posinf=1.0, neginf=0.0)
    return logit.clamp(0, 1)

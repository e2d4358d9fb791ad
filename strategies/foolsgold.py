"""FoolsGold.

Fung, Yoon, Beschastnikh, "The Limitations of Federated Learning in Sybil
Settings", RAID 2020, arXiv 1808.04866.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strategies.base import AggregationResult, Aggregator, check_param, is_real, register_aggregator


@register_aggregator("foolsgold")
@dataclass(frozen=True, kw_only=True)
class FoolsGold(Aggregator):
    """Down-weight clients whose updates are too similar to each other (sybils).

    cs_ij = cosine similarity; v_i = max_j cs_ij; pardoning cs_ij *= v_i / v_j when
    v_j > v_i; alpha_i = 1 - max_j cs_ij, rescaled to max 1, then the logit
    kappa (ln(alpha / (1 - alpha)) + 0.5) clipped to [0, 1].

    kappa : confidence of the logit (the paper's kappa, 1).
    Stateless: the paper accumulates each client's history of updates; the rule
    sees one round's matrix (rows carry no identity), so it uses the round's
    updates. scores = 1 - alpha.
    """

    kappa: float = 1.0

    def validate(self) -> None:
        check_param(is_real(self.kappa) and self.kappa > 0, "foolsgold", "kappa", self.kappa, "a number > 0")

    def aggregate(self, U, weights, *, generator=None, rows=None):
        a = foolsgold_weights(U, self.kappa)
        keep = a > 0
        if not bool(keep.any()):  # every client a perfect sybil: nothing is trusted
            return AggregationResult(torch.zeros(U.shape[1], dtype=U.dtype, device=U.device), keep, 1 - a)
        c = a if weights is None else a * weights.to(a.dtype)
        c = c / c.sum() if bool(c.sum() > 0) else a / a.sum()
        return AggregationResult(c.to(U.dtype) @ U, keep, 1 - a)


def foolsgold_weights(U: torch.Tensor, kappa: float) -> torch.Tensor:
    n = len(U)
    G = (U @ U.T).to(torch.float64)
    nrm = G.diagonal().clamp_min(1e-300).sqrt()
    cs = (G / nrm[:, None] / nrm[None, :]).fill_diagonal_(-float("inf"))
    v = cs.max(dim=1).values
    pardon = (v[None, :] > v[:, None])  # v_j > v_i
    cs = torch.where(pardon, cs * v[:, None] / v[None, :], cs).fill_diagonal_(-float("inf"))
    a = (1 - cs.max(dim=1).values).clamp(0, 1) if n > 1 else torch.ones(1, dtype=torch.float64, device=U.device)
    a = a / a.max() if bool(a.max() > 0) else a
    a = torch.where(a >= 1, torch.full_like(a, 0.99), a)
    logit = kappa * (torch.log(a / (1 - a)) + 0.5)
    return torch.where(a > 0, logit.clamp(0, 1), torch.zeros_like(a))

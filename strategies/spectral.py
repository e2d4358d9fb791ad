"""Spectral signatures.

Tran, Li, Madry, "Spectral Signatures in Backdoor Attacks", NeurIPS 2018,
arXiv:1811.00636.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedsec.strategies._functional import max_abs, weighted_mean
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_real,
    register_aggregator,
)


@register_aggregator("spectral")
@dataclass(frozen=True, kw_only=True)
class Spectral(Aggregator):
    """Centre the updates on their mean, take the top right singular vector v of
    the centred (n, d) matrix, score tau_i = <x_i - mu, v>^2, remove the
    ceil(1.5 eps n) highest scores and return the (weighted) mean of the rest.

    Parameters
    ----------
    eps : epsilon, the upper bound on the corrupted fraction (the paper removes
          1.5 eps n points); needs ceil(1.5 eps n) < n.

    v comes from the n x n Gram matrix when n <= d, else from
    torch.linalg.svd(full_matrices=False) of the (n, d) matrix. scores = tau.
    """

    name = "spectral"
    eps: float = 0.1

    def validate(self) -> None:
        check_param(is_real(self.eps) and 0 <= self.eps < 0.5, self.name, "eps",
                    self.eps, "a number in [0, 0.5)")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n = U.shape[0]
        r = math.ceil(1.5 * self.eps * n - 1e-9)
        if r >= n:
            raise ValueError(f"Spectral: removing ceil(1.5 eps n)={r} of n={n} finite clients "
                             f"(eps={self.eps}) leaves none; needs ceil(1.5 eps n) < n")
        tau = spectral_scores(U)
        kept = torch.ones(n, dtype=torch.bool, device=U.device)
        if r > 0:
            kept[torch.topk(tau, r).indices] = False
        return AggregationResult(vector=weighted_mean(U, weights, kept), accepted=kept, scores=tau)


def spectral_scores(U: torch.Tensor) -> torch.Tensor:
    """tau_i = <x_i - mu, v>^2 (float64), v the top right singular vector of U - mu."""
    n, d = U.shape
    mu = U.mean(dim=0)
    Xc = U - mu
    s = max_abs(Xc)
    s = s if (math.isfinite(s) and s > 1e15 and U.dtype == torch.float32) else 1.0
    Xs = Xc / s if s != 1.0 else Xc
    if n <= d:
        _, evecs = torch.linalg.eigh((Xs @ Xs.T).to(torch.float64))
        w = Xs.T @ evecs[:, -1].to(Xs.dtype)
        nv = float(torch.linalg.vector_norm(w))
        proj = (Xs @ w).to(torch.float64) / nv if nv > 0 else torch.zeros(n, dtype=torch.float64, device=U.device)
    else:
        _, _, Vh = torch.linalg.svd(Xs, full_matrices=False)
        proj = (Xs @ Vh[0]).to(torch.float64)
    return (proj * s) ** 2

"""FLTrust: trust bootstrapping from a small root dataset held by the server.

Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
Bootstrapping", NDSS 2021, arXiv:2012.13995 (Algorithm 2, Eq. 2-4). Checked
against the authors' MXNet aggregation (``fltrust`` in their released
nd_aggregation.py) and FLPoison (vio1etus/FLPoison, aggregators/fltrust.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsec.strategies._functional import max_abs, row_norms
from fedsec.strategies.base import AggregationResult, Aggregator, register_aggregator


@register_aggregator("fltrust")
@dataclass(frozen=True, kw_only=True)
class FLTrust(Aggregator):
    """With g_0 the server's update on its root dataset (``reference``):

        TS_i  = ReLU(cos(g_i, g_0))                      trust score (Eq. 2)
        g'_i  = (|g_0| / |g_i|) g_i                      magnitude normalisation (Eq. 3)
        g     = sum_i TS_i g'_i / sum_j TS_j             (Eq. 4)

    Call as ``rule(U, reference=g0)``; g0 is required (ValueError without it).
    The server trains g_0 from the current global model on ``server.root_size``
    clean examples it holds (wired by the server, never a client's data).

    No hyperparameters. Example counts are ignored (the paper weights by trust
    only). If every trust score is 0 (no client points within 90 degrees of
    g_0) the output is the zero update and nobody is accepted: the authors'
    code divides by sum TS + 1e-9, which gives the same zero update (FLPoison
    falls back to a uniform average instead). Zero updates get TS = 0.
    accepted = TS_i > 0; scores = 1 - cos(g_i, g_0), in [0, 2].
    """

    name = "fltrust"
    needs_reference: ClassVar[bool] = True

    def aggregate(self, U, weights, *, generator=None, rows=None, reference=None) -> AggregationResult:
        cos = cosines_to(U, reference)
        coef = fltrust_coefficients(cos, row_norms(U), float(torch.linalg.vector_norm(
            reference, dtype=torch.float64)))
        return AggregationResult(vector=coef.to(U.dtype) @ U, accepted=cos > 0, scores=1 - cos)


def cosines_to(U: torch.Tensor, g0: torch.Tensor) -> torch.Tensor:
    """(n,) float64 cos(x_i, g0); 0 where either vector is zero."""
    su, s0 = max_abs(U), max_abs(g0)
    # dot products of 1e30-scale rows overflow float32; cosines are scale free
    Us = U / su if su > 1e15 else U
    gs = g0 / s0 if s0 > 1e15 else g0
    dots = (Us @ gs).to(torch.float64)
    denom = row_norms(Us) * float(torch.linalg.vector_norm(gs, dtype=torch.float64))
    cos = torch.where(denom > 0, dots / denom.clamp_min(1e-300), torch.zeros_like(dots))
    return cos.clamp(-1, 1)


def fltrust_coefficients(cos: torch.Tensor, norms: torch.Tensor, norm0: float) -> torch.Tensor:
    """c_i with g = sum_i c_i x_i: c_i = TS_i (|g_0| / |x_i|) / sum_j TS_j (float64)."""
    ts = cos.clamp_min(0)
    ts = torch.where(norms > 0, ts, torch.zeros_like(ts))
    total = ts.sum()
    if not bool(total > 0):
        return torch.zeros_like(ts)
    return ts / total * norm0 / norms.clamp_min(1e-300)

"""Bucketing.

Karimireddy, He, Jaggi, "Byzantine-Robust Learning on Heterogeneous Datasets
via Bucketing", ICLR 2022, arXiv:2006.09365 (Algorithm 1). Cross-checked
against ByzFL's ``Bucketing`` (LPD-EPFL/byzfl).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies.base import check_param, is_int
from fedsec.strategies.pre_aggregators.base import PreAggregator, register_pre_aggregator


@register_pre_aggregator("bucketing")
@dataclass(frozen=True, kw_only=True)
class Bucketing(PreAggregator):
    """Shuffle the updates with a random permutation pi, cut them into buckets of
    s consecutive updates and average each bucket:

        y_b = 1/|B_b| sum_{i in B_b} x_{pi(i)},   B_b = {(b-1)s + 1, ..., min(bs, n)},

    ceil(n/s) buckets, the last one smaller when s does not divide n (as ByzFL).

    Parameters
    ----------
    s : s, the bucket size (>= 1; s = 1 only shuffles).

    The permutation comes from the call's generator (torch.randperm), so the
    buckets depend on the generator state and on the client order: Bucketing is
    permutation invariant only in distribution. Buckets are plain averages (the
    paper's); weights' = the sum of the members' example counts.
    M[b, i] = 1/|B_b| for the members i of bucket b.
    """

    name = "bucketing"
    s: int = 2

    def validate(self) -> None:
        check_param(is_int(self.s) and self.s >= 1, self.name, "s", self.s, "an integer >= 1")

    def mix(self, X, weights, *, generator=None):
        n = X.shape[0]
        gdev = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(n, generator=generator, device=gdev).to(X.device)
        M = bucket_matrix(perm, self.s)
        w = None if weights is None else (M > 0).to(weights.dtype) @ weights
        return M.to(X.dtype) @ X, w, M


def bucket_matrix(perm: torch.Tensor, s: int) -> torch.Tensor:
    """(ceil(n/s), n) float64: row b averages the clients perm[b s : (b+1) s]."""
    n = perm.shape[0]
    nb = -(-n // s)
    bucket = torch.arange(n, device=perm.device) // s          # bucket of position p
    size = torch.bincount(bucket, minlength=nb).to(torch.float64)
    M = torch.zeros(nb, n, dtype=torch.float64, device=perm.device)
    M[bucket, perm] = 1.0 / size[bucket]
    return M

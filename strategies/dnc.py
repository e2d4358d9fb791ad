"""Divide-and-Conquer (DnC).

Shejwalkar, Houmansadr, "Manipulating the Byzantine: Optimizing Model Poisoning
Attacks and Defenses for Federated Learning", NDSS 2021 (Algorithm 2).
Checked against FLPoison (vio1etus/FLPoison, aggregators/dnc.py) and the
SignGuard authors' DnC (JianXu95/SignGuard, aggregators/DnC.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedsec.strategies._functional import top_direction, weighted_mean
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_int,
    is_real,
    register_aggregator,
)


@register_aggregator("dnc")
@dataclass(frozen=True, kw_only=True)
class DnC(Aggregator):
    """Repeat ``niters`` times: sample b coordinates at random; centre the
    sub-sampled updates on their mean; take the top right singular vector v of
    the centred (n, b) matrix; score s_i = <x_i^r - mu^r, v>^2; keep the
    n - c f clients with the lowest scores. The good set is the intersection
    over the iterations; the output is its (weighted) mean.

    Parameters
    ----------
    f      : f, the number of malicious clients assumed.
    c      : c, the filtering fraction: floor(n - c f) clients are kept per
             iteration (paper/FLPoison/Blades default 1.0).
    niters : niters, the number of random sub-samplings (default 5, as
             FLPoison and Blades).
    b      : b, the number of coordinates sampled per iteration (default
             10,000, as Blades); all d coordinates when b >= d.

    The coordinates come from the call's generator (never from the client
    order, so the rule is permutation invariant for a fixed generator state).
    accepted = the final good set; scores = s_i / mean_j s_j averaged over the
    iterations (higher = more suspect).
    On clean data each iteration still drops floor(c f) clients and the
    intersection compounds it: about 60% of honest clients rejected at n=20,
    f=4, d=4e4, isotropic updates (the mean of the rest stays unbiased).
    Cost: niters x (a randperm of d, an (n, b) gather and an n x n eigh).
    """

    name = "dnc"
    f: int = 0
    c: float = 1.0
    niters: int = 5
    b: int = 10_000

    def validate(self) -> None:
        owner = self.name
        check_param(is_int(self.f) and self.f >= 0, owner, "f", self.f, "an integer >= 0")
        check_param(is_real(self.c) and self.c >= 0, owner, "c", self.c, "a number >= 0")
        check_param(is_int(self.niters) and self.niters >= 1, owner, "niters", self.niters,
                    "an integer >= 1")
        check_param(is_int(self.b) and self.b >= 1, owner, "b", self.b, "an integer >= 1")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n, d = U.shape
        keep = kept_count(n, self.f, self.c)
        if keep < 1:
            raise ValueError(f"DnC: keeping floor(n - c f) = floor({n} - {self.c} * {self.f}) = {keep} "
                             f"clients leaves none; needs n > c f")
        good = torch.ones(n, dtype=torch.bool, device=U.device)
        total = torch.zeros(n, dtype=torch.float64, device=U.device)
        # with every coordinate sampled the iterations would repeat the same step
        iters = 1 if self.b >= d else self.niters
        for _ in range(iters):
            cols = sample_coordinates(d, self.b, generator, U.device)
            s = dnc_scores(U.index_select(1, cols), generator)
            good &= lowest_mask(s, keep)
            mean_s = s.mean()
            total += s / mean_s if bool(mean_s > 0) else torch.zeros_like(s)
        return AggregationResult(vector=weighted_mean(U, weights, good), accepted=good,
                                 scores=total / iters)


def kept_count(n: int, f: int, c: float) -> int:
    """floor(n - c f), as int(n - c * f) in the reference code (guarding float error)."""
    return int(math.floor(n - c * f + 1e-9))


def sample_coordinates(d: int, b: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """b distinct coordinate indices drawn uniformly (all of them when b >= d)."""
    if b >= d:
        return torch.arange(d, device=device)
    gdev = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(d, generator=generator, device=gdev)
    return perm[:b].to(device)


def dnc_scores(X: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """s_i = <x_i - mu, v>^2 (float64), v the top right singular vector of X - mu."""
    Xc = X - X.mean(dim=0)
    _, v = top_direction(Xc, generator)
    return (Xc @ v).to(torch.float64) ** 2


def lowest_mask(s: torch.Tensor, k: int) -> torch.Tensor:
    """(n,) bool: the k lowest entries of s."""
    mask = torch.zeros(s.shape[0], dtype=torch.bool, device=s.device)
    mask[torch.topk(s, k, largest=False).indices] = True
    return mask

"""SignGuard: norm filtering plus clustering of sign statistics.

Xu, Huang, Song, Lan, "Byzantine-robust Federated Learning through Collaborative
Malicious Gradient Filtering", ICDCS 2022, arXiv:2109.05872 (Algorithm 1).
Follows the authors' code (JianXu95/SignGuard, aggregators/signguard.py,
``signguard_multiclass``): thresholds 0.1 / 3.0 of the median norm, sign
statistics on 10% of the coordinates, MeanShift with a bandwidth from the
0.5-quantile of the neighbour distances, clipping to the median norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.strategies._functional import clip_factors, coordinate_median, row_norms, weighted_mean
from fedsec.strategies.base import (
    AggregationResult,
    Aggregator,
    check_param,
    is_real,
    register_aggregator,
)

_SELECTIONS = ("block", "random")


@register_aggregator("signguard")
@dataclass(frozen=True, kw_only=True)
class SignGuard(Aggregator):
    """1. Norm filter: S1 = {i : L < |g_i| / med_j |g_j| < R}.
    2. Sign clustering: on a random selection of floor(q d) (at least
       1) coordinates, each client's features are the fractions of positive,
       zero and negative entries, each feature divided by its maximum over the
       clients (+1e-8); MeanShift (flat kernel, bin seeding, unassigned points
       left out) groups them; S2 = the largest cluster.
    3. Output: the (weighted) mean over S1 & S2 of g_i min(1, med / |g_i|),
       the updates clipped to the median norm of all clients.

    Parameters
    ----------
    lower     : L, the lower norm ratio (paper/authors: 0.1).
    upper     : R, the upper norm ratio (paper/authors: 3.0), > L.
    fraction  : q, the fraction of coordinates whose signs are counted (0.1).
    selection : "block" (a contiguous block at a random start, as the
                authors' code) or "random" (q d coordinates drawn without
                replacement, as the paper's text).
    quantile  : the MeanShift bandwidth is the mean over clients of the
                distance to their floor(quantile n)-th nearest feature vector,
                the point itself counted (sklearn's estimate_bandwidth; the
                authors' 0.5). sklearn subsamples 50 points for that mean
                with a fixed seed; here all points are used (identical for
                n <= 50, and independent of client order beyond).

    The coordinate selection comes from the call's generator. MeanShift is
    sklearn's (the features are n x 3 numbers: the only CPU round trip).
    If the intersection is empty the output is the zero update.
    scores = distance of each client's sign features to the mean feature of
    the selected cluster, plus 1 for a client outside the norm band.
    """

    name = "signguard"
    lower: float = 0.1
    upper: float = 3.0
    fraction: float = 0.1
    selection: str = "block"
    quantile: float = 0.5

    def validate(self) -> None:
        owner = self.name
        check_param(is_real(self.lower) and self.lower >= 0, owner, "lower", self.lower, "a number >= 0")
        check_param(is_real(self.upper) and self.upper > self.lower, owner, "upper", self.upper,
                    f"a number > lower={self.lower}")
        check_param(is_real(self.fraction) and 0 < self.fraction <= 1, owner, "fraction", self.fraction,
                    "a number in (0, 1]")
        check_param(self.selection in _SELECTIONS, owner, "selection", self.selection,
                    f"one of {', '.join(map(repr, _SELECTIONS))}")
        check_param(is_real(self.quantile) and 0 < self.quantile <= 1, owner, "quantile",
                    self.quantile, "a number in (0, 1]")

    def aggregate(self, U, weights, *, generator=None, rows=None) -> AggregationResult:
        n, d = U.shape
        norms = row_norms(U)
        med = float(coordinate_median(norms[:, None])[0])
        in_band = norm_band(norms, med, self.lower, self.upper)
        cols = select_coordinates(d, self.fraction, self.selection, generator, U.device)
        feats = sign_features(U.index_select(1, cols))
        cluster = largest_meanshift_cluster(feats, self.quantile)
        good = in_band & cluster
        centre = feats[cluster].mean(dim=0)
        scores = torch.linalg.vector_norm(feats - centre, dim=1) + (~in_band).to(torch.float64)
        if not bool(good.any()):
            return AggregationResult(vector=torch.zeros(d, dtype=U.dtype, device=U.device),
                                     accepted=good, scores=scores)
        coef = clip_factors(norms, med)
        clipped_mean = weighted_mean(U * coef.to(U.dtype)[:, None], weights, good)
        return AggregationResult(vector=clipped_mean, accepted=good, scores=scores)


def norm_band(norms: torch.Tensor, med: float, lower: float, upper: float) -> torch.Tensor:
    """(n,) bool: L med < |g_i| < R med (strict, as the authors' code)."""
    return (norms > lower * med) & (norms < upper * med)


def select_coordinates(
    d: int, fraction: float, selection: str, generator: torch.Generator | None, device
) -> torch.Tensor:
    """floor(q d) (>= 1) coordinate indices: a contiguous block at a uniform random
    start ("block") or a uniform random subset ("random")."""
    b = max(1, int(fraction * d))
    gdev = generator.device if generator is not None else torch.device("cpu")
    if selection == "block":
        start = int(torch.randint(0, d - b + 1, (1,), generator=generator, device=gdev))
        return torch.arange(start, start + b, device=device)
    return torch.randperm(d, generator=generator, device=gdev)[:b].to(device)


def sign_features(X: torch.Tensor) -> torch.Tensor:
    """(n, 3) float64: fractions of positive, zero and negative entries per row, each
    column divided by its maximum over the rows (+1e-8)."""
    b = X.shape[1]
    f = torch.stack([(X > 0).sum(1), (X == 0).sum(1), (X < 0).sum(1)], dim=1).to(torch.float64) / b
    return f / (f.amax(dim=0) + 1e-8)


def knn_bandwidth(F: torch.Tensor, quantile: float) -> float:
    """Mean over points of the distance to their k-th nearest point (itself first),
    k = max(1, floor(quantile n)): sklearn.cluster.estimate_bandwidth on all points."""
    n = F.shape[0]
    k = max(1, int(n * quantile))
    D = torch.cdist(F, F)
    return float(torch.sort(D, dim=1).values[:, k - 1].mean())


def largest_meanshift_cluster(F: torch.Tensor, quantile: float) -> torch.Tensor:
    """(n,) bool: members of the most populous MeanShift cluster (ties: sklearn's
    label order, i.e. the denser centre)."""
    n = F.shape[0]
    bw = knn_bandwidth(F, quantile)
    if not bw > 0:
        # more than a quantile of the points coincide: the clusters are the groups of
        # identical feature vectors (MeanShift's limit as the bandwidth -> 0)
        _, inverse, counts = torch.unique(F, dim=0, return_inverse=True, return_counts=True)
        return inverse == int(torch.argmax(counts))
    from sklearn.cluster import MeanShift

    labels = MeanShift(bandwidth=bw, bin_seeding=True, cluster_all=False).fit(F.cpu().numpy()).labels_
    lab = torch.as_tensor(labels, device=F.device)
    clustered = lab[lab >= 0]
    if clustered.numel() == 0:
        return torch.ones(n, dtype=torch.bool, device=F.device)
    return lab == int(torch.argmax(torch.bincount(clustered)))

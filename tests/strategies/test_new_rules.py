"""Issue 19/23 rules: dnc, signguard, clipped_clustering, mda, meamed, fltrust, sever,
tukey. Each: a hand-worked tiny input and a comparison with an independent reference
(numbers from the authors'/ByzFL's code or a straightforward re-derivation here)."""

import itertools
import math

import numpy as np
import pytest
import torch
from agg_helpers import gen, randn
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsec.strategies import get_aggregator

BYZFL_X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
# the 6-client example used for DnC and Sever: five near the origin, one far along x
SPIKE = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [6.0, 0.0]])


# ----------------------------------------------------------------------------- meamed
def reference_meamed(X: np.ndarray, f: int) -> np.ndarray:
    """Per column: numpy median, sort by (|x - med|, x), mean of the first n - f."""
    n, d = X.shape
    med = np.median(X, axis=0)
    out = np.empty(d)
    for k in range(d):
        order = sorted(range(n), key=lambda i: (abs(X[i, k] - med[k]), X[i, k]))
        out[k] = X[order[: n - f], k].mean()
    return out


def test_meamed_hand_worked_and_byzfl_example():
    # ByzFL's docstring example: Meamed(1) on BYZFL_X -> [2.5, 3.5, 4.5]
    torch.testing.assert_close(get_aggregator("meamed", f=1)(BYZFL_X).vector, torch.tensor([2.5, 3.5, 4.5]))
    # [1, 2, 3, 10, 100], f=2: median 3, nearest three 3, 2, 1 -> 2
    col = torch.tensor([[1.0], [2.0], [3.0], [10.0], [100.0]])
    assert get_aggregator("meamed", f=2)(col).vector.item() == pytest.approx(2.0)
    # even n: [0, 1, 2, 10], f=1: median 1.5; nearest 1, 2 then 0 -> 1
    col = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    assert get_aggregator("meamed", f=1)(col).vector.item() == pytest.approx(1.0)
    # tie at distance 2 from median 2 between 0 and 4: the smaller value -> mean(2, 0) = 1
    col = torch.tensor([[4.0], [2.0], [0.0]])
    assert get_aggregator("meamed", f=1)(col).vector.item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="2f < n"):
        get_aggregator("meamed", f=2)(torch.randn(4, 3))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 11), d=st.integers(1, 9), seed=st.integers(0, 2**16), ties=st.booleans())
def test_meamed_matches_reference(n, d, seed, ties):
    X = torch.randn(n, d, generator=gen(seed), dtype=torch.float64)
    if ties:
        X = X.round()
    f = (n - 1) // 2
    for ff in {0, f // 2, f}:
        np.testing.assert_allclose(get_aggregator("meamed", f=ff)(X).vector.numpy(),
                                   reference_meamed(X.numpy(), ff), rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------------------- mda
def reference_mda(X: np.ndarray, f: int) -> np.ndarray:
    """Exhaustive: min diameter, then min sum of pairwise distances, then lexicographic."""
    n = X.shape[0]
    D = np.linalg.norm(X[:, None] - X[None], axis=2)
    best = min(itertools.combinations(range(n), n - f),
               key=lambda S: (max(D[i, j] for i in S for j in S), sum(D[i, j] for i in S for j in S), S))
    return X[list(best)].mean(axis=0)


def test_mda_hand_worked_and_byzfl_example():
    # ByzFL's docstring example: MDA(1) on BYZFL_X -> [2.5, 3.5, 4.5] (subsets {0,1} and
    # {1,2} tie on diameter and total; the lexicographically first wins)
    torch.testing.assert_close(get_aggregator("mda", f=1)(BYZFL_X).vector, torch.tensor([2.5, 3.5, 4.5]))
    # 1-D [0, 1, 2, 10, 11], f=2: {0, 1, 2} has diameter 2, any set with 10 or 11 >= 8
    out = get_aggregator("mda", f=2)(torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]]))
    assert out.vector.item() == pytest.approx(1.0) and out.accepted.tolist() == [True] * 3 + [False] * 2
    # weights: the same subset, weighted
    w = torch.tensor([1.0, 1.0, 2.0, 5.0, 5.0])
    out = get_aggregator("mda", f=2)(torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]]), weights=w)
    assert out.vector.item() == pytest.approx(5.0 / 4.0)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 8), d=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_mda_matches_exhaustive_reference(n, d, seed):
    X = torch.randn(n, d, generator=gen(seed), dtype=torch.float64)
    for f in range(0, (n - 1) // 2 + 1):
        np.testing.assert_allclose(get_aggregator("mda", f=f)(X).vector.numpy(),
                                   reference_mda(X.numpy(), f), rtol=1e-6, atol=1e-9)


def test_mda_subset_cap_is_a_clear_error():
    with pytest.raises(ValueError, match=r"C\(n=30, f=6\) = 593,775 subsets exceeds max_subsets=100,000"):
        get_aggregator("mda", f=6)(torch.randn(30, 4))
    get_aggregator("mda", f=6, max_subsets=600_000)   # raising the cap is allowed


# -------------------------------------------------------------------------------- dnc
def reference_dnc(X: np.ndarray, f: int, c: float = 1.0) -> np.ndarray:
    """FLPoison's DnC step with every coordinate sampled: numpy SVD, keep int(n - c f)."""
    n = X.shape[0]
    Xc = X - X.mean(axis=0)
    v = np.linalg.svd(Xc, full_matrices=False)[2][0]
    s = (Xc @ v) ** 2
    keep = np.argsort(s, kind="stable")[: int(n - c * f)]
    return np.sort(keep)


def test_dnc_hand_worked():
    # centred x: -1, 0, -2, -1, -1, 5 (mean (1, 0)); sum x^2 = 32 >> sum y^2 = 2, so
    # v = +-e_x and the scores are 1, 0, 4, 1, 1, 25
    out = get_aggregator("dnc", f=1)(SPIKE, generator=gen())
    assert out.accepted.tolist() == [True] * 5 + [False]
    torch.testing.assert_close(out.vector, torch.zeros(2))
    out = get_aggregator("dnc", f=2)(SPIKE, generator=gen())     # also drops (-1, 0), score 4
    assert out.accepted.tolist() == [True, True, False, True, True, False]
    torch.testing.assert_close(out.vector, torch.tensor([0.25, 0.0]))
    assert int(out.scores.argmax()) == 5


@settings(max_examples=20, deadline=None)
@given(n=st.integers(4, 12), d=st.integers(2, 30), seed=st.integers(0, 2**16))
def test_dnc_matches_flpoison_step_when_all_coordinates_are_sampled(n, d, seed):
    X = torch.randn(n, d, generator=gen(seed), dtype=torch.float64)
    X[0] *= 6  # a clear outlier keeps the top direction away from eigenvalue ties
    f = n // 4
    out = get_aggregator("dnc", f=f, niters=3, b=d)(X, generator=gen(1))
    assert out.accepted.nonzero().squeeze(1).tolist() == reference_dnc(X.numpy(), f).tolist()


def test_dnc_subsampling_uses_the_generator_and_catches_a_shifted_group():
    g = gen(4)
    honest = torch.randn(16, 5000, generator=g)
    bad = honest[:4].mean(0) + 0.8 + 0.1 * torch.randn(4, 5000, generator=g)  # shifted, tight
    U = torch.cat([honest, bad])
    out = get_aggregator("dnc", f=4, b=500)(U, generator=gen(1))
    assert not out.accepted[16:].any() and out.accepted[:16].sum() >= 12
    a = get_aggregator("dnc", f=4, b=500, niters=1)(U, generator=gen(1)).scores
    b = get_aggregator("dnc", f=4, b=500, niters=1)(U, generator=gen(2)).scores
    assert not torch.equal(a, b)   # different coordinates sampled


# ---------------------------------------------------------------------------- fltrust
def reference_fltrust(X: np.ndarray, g0: np.ndarray) -> np.ndarray:
    """The authors' MXNet aggregation: cos with 1e-9 guards, ReLU, / (sum + 1e-9),
    magnitude normalised to |g0|."""
    cos = X @ g0 / (np.linalg.norm(g0) + 1e-9) / (np.linalg.norm(X, axis=1) + 1e-9)
    ts = np.maximum(cos, 0)
    w = ts / (ts.sum() + 1e-9)
    return (X * (w / (np.linalg.norm(X, axis=1) + 1e-9) * np.linalg.norm(g0))[:, None]).sum(axis=0)


def test_fltrust_hand_worked():
    g0 = torch.tensor([1.0, 0.0])
    U = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0]])
    out = get_aggregator("fltrust")(U, reference=g0)
    # TS = [1, 0, 0, 1/sqrt2]; normalised rows (1, 0) and (1, 1)/sqrt2;
    # g = ((1, 0) + (1/2, 1/2)) / (1 + 1/sqrt2)
    expect = torch.tensor([1.5, 0.5]) / (1 + 1 / math.sqrt(2))
    torch.testing.assert_close(out.vector, expect)
    assert out.accepted.tolist() == [True, False, False, True]
    torch.testing.assert_close(out.scores, torch.tensor([0.0, 1.0, 2.0, 1 - 1 / math.sqrt(2)]))


def test_fltrust_matches_authors_formula():
    for seed in range(5):
        X = torch.randn(10, 40, generator=gen(seed), dtype=torch.float64)
        g0 = X[:7].mean(0) + 0.3 * torch.randn(40, generator=gen(seed + 100), dtype=torch.float64)
        X[7:] = -3 * X[7:]     # three clients pointing away
        np.testing.assert_allclose(get_aggregator("fltrust")(X, reference=g0).vector.numpy(),
                                   reference_fltrust(X.numpy(), g0.numpy()), rtol=1e-5, atol=1e-6)


def test_fltrust_reference_contract():
    U = randn(5, 4)
    rule = get_aggregator("fltrust")
    with pytest.raises(ValueError, match=r"FLTrust needs reference.*\(4,\) tensor"):
        rule(U)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        rule(U, reference=torch.ones(3))
    with pytest.raises(ValueError, match="finite"):
        rule(U, reference=torch.tensor([1.0, float("nan"), 0.0, 0.0]))
    # nobody within 90 degrees of g0: the zero update, nobody accepted (authors' code: the same)
    out = rule(-U.abs() - 0.1, reference=torch.ones(4))
    assert not out.accepted.any() and torch.equal(out.vector, torch.zeros(4))
    # magnitude: one client scaled by 1e6 in g0's direction moves nothing beyond |g0|
    V = torch.cat([U, 1e6 * torch.ones(1, 4)])
    assert float(rule(V, reference=torch.ones(4)).vector.norm()) <= 2.0 + 1e-5


# ----------------------------------------------------------------------------- sever
def test_sever_hand_worked_fraction_and_threshold():
    out = get_aggregator("sever", fraction=0.1)(SPIKE, generator=gen())   # ceil(0.6) = 1 removed
    assert out.accepted.tolist() == [True] * 5 + [False]
    torch.testing.assert_close(out.vector, torch.zeros(2))
    # threshold 3 x median score: scores 1, 0, 4, 1, 1, 25, median 1 -> drop 4 and 25
    out = get_aggregator("sever", fraction=None, threshold=3.0)(SPIKE, generator=gen())
    assert out.accepted.tolist() == [True, True, False, True, True, False]
    torch.testing.assert_close(out.vector, torch.tensor([0.25, 0.0]))
    with pytest.raises(ValueError, match="exactly one of fraction or threshold"):
        get_aggregator("sever", threshold=3.0)


def test_sever_beats_the_mean_on_a_corrupted_federation():
    """eps-corrupted Gaussian updates (Sever's setting): the filtered mean lands near the
    clean mean, the plain mean does not."""
    n, d, eps = 200, 50, 0.1
    g = gen(5)
    mu = torch.randn(d, generator=g)
    X = mu + torch.randn(n, d, generator=g)
    m = int(eps * n)
    direction = torch.randn(d, generator=g)
    X[:m] = mu + 6.0 * direction / direction.norm() * math.sqrt(d) ** 0.5 + 0.1 * torch.randn(m, d, generator=g)
    err = {k: float((v - mu).norm()) for k, v in {
        "mean": X.mean(0),
        "clean": X[m:].mean(0),
        "sever": get_aggregator("sever", fraction=0.05, iterations=4)(X, generator=gen()).vector,
        "sever_thr": get_aggregator("sever", fraction=None, threshold=8.0, iterations=10)(X, generator=gen()).vector,
    }.items()}
    assert err["mean"] > 1.0
    assert err["sever"] < 1.5 * err["clean"] + 0.05 and err["sever_thr"] < 1.5 * err["clean"] + 0.05


# ------------------------------------------------------------------------------ tukey
def exact_depth_2d(P: np.ndarray, angles: int = 20_000) -> np.ndarray:
    """Tukey depth in the plane over a dense sweep of directions (independent of the rule)."""
    t = np.linspace(0, np.pi, angles, endpoint=False)
    W = np.stack([np.cos(t), np.sin(t)])
    proj = P @ W
    below = (proj[None, :, :] <= proj[:, None, :]).sum(1)
    above = (proj[None, :, :] >= proj[:, None, :]).sum(1)
    return np.minimum(below, above).min(1) / P.shape[0]


def test_tukey_hand_worked():
    # 1-D: depths 1, 2, 3, 2, 1 (/5) -> the median 2
    col = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])
    out = get_aggregator("tukey", dim=1, projections=5)(col, generator=gen())
    assert out.vector.item() == 2.0 and out.accepted.tolist() == [False, False, True, False, False]
    # square corners and centre: the centre has depth 3/5, each corner 1/5. In d = k = 2
    # the random basis is invertible and depth is affine invariant: the exact planar depth
    sq = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [1.0, 1.0]])
    out = get_aggregator("tukey", dim=2, projections=500)(sq, generator=gen())
    torch.testing.assert_close(out.vector, torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(out.scores, 1 - torch.tensor([0.2, 0.2, 0.2, 0.2, 0.6]))


def test_random_tukey_depth_converges_to_exact_planar_depth():
    from fedsec.strategies.tukey import random_tukey_depth

    P = torch.randn(15, 2, generator=gen(6), dtype=torch.float64)
    W = torch.randn(2, 4000, generator=gen(7), dtype=torch.float64)
    np.testing.assert_allclose(random_tukey_depth(P @ W).numpy(), exact_depth_2d(P.numpy()))


def test_tukey_ignores_a_far_group_and_a_huge_client():
    g = gen(8)
    honest = torch.randn(9, 1000, generator=g)
    bad = 5 + torch.randn(3, 1000, generator=g)
    out = get_aggregator("tukey")(torch.cat([bad, honest]), generator=gen(1))
    assert not out.accepted[:3].any()
    U = torch.cat([honest, torch.full((1, 1000), 1e30)])
    out = get_aggregator("tukey")(U, generator=gen(1))
    assert not out.accepted[-1] and float(out.vector.abs().max()) < 5


# -------------------------------------------------------------------------- signguard
def test_signguard_pieces_hand_worked():
    from fedsec.strategies.signguard import norm_band, sign_features

    norms = torch.tensor([0.05, 1.0, 2.0, 2.9, 3.0, 10.0], dtype=torch.float64)
    assert norm_band(norms, 1.0, 0.1, 3.0).tolist() == [False, True, True, True, False, False]
    X = torch.tensor([[1.0, -1.0, 0.0, 2.0], [1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, 0.0, 0.0]])
    # fractions pos/zero/neg: [.5,.25,.25], [1,0,0], [0,.5,.5]; column maxima 1, .5, .5
    expect = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(sign_features(X), expect / (1 + 1e-8 / torch.tensor([1.0, 0.5, 0.5],
                                                                                    dtype=torch.float64)))


def test_signguard_bandwidth_equals_sklearn():
    from sklearn.cluster import estimate_bandwidth

    from fedsec.strategies.signguard import knn_bandwidth

    for seed in range(4):
        F = torch.rand(20 + seed, 3, generator=gen(seed), dtype=torch.float64)
        assert knn_bandwidth(F, 0.5) == pytest.approx(estimate_bandwidth(F.numpy(), quantile=0.5, n_samples=50))


def reference_signguard(X: np.ndarray) -> list[int]:
    """The authors' signguard_multiclass with every coordinate selected (no randomness):
    norm band (0.1, 3) x median, sign features, sklearn MeanShift, largest cluster."""
    from sklearn.cluster import MeanShift, estimate_bandwidth

    norms = np.linalg.norm(X, axis=1)
    med = np.median(norms)
    band = set(np.flatnonzero((norms > 0.1 * med) & (norms < 3.0 * med)).tolist())
    s = np.sign(X)
    feat = np.stack([(s == v).sum(1) / X.shape[1] for v in (1, 0, -1)], axis=1)
    feat = feat / (feat.max(0) + 1e-8)
    bw = estimate_bandwidth(feat, quantile=0.5, n_samples=50)
    labels = MeanShift(bandwidth=bw, bin_seeding=True, cluster_all=False).fit(feat).labels_
    big = np.argmax([np.sum(labels == i) for i in range(labels.max() + 1)])
    return sorted(band & set(np.flatnonzero(labels == big).tolist()))


def test_signguard_matches_authors_steps_and_rejects_sign_and_norm_attacks():
    g = gen(9)
    honest = torch.randn(14, 2000, generator=g, dtype=torch.float64)
    positive = honest[:3].abs() + 0.1                      # sign statistics off
    huge = 10 * honest[3:5]                                # norm off
    X = torch.cat([honest, positive, huge])
    out = get_aggregator("signguard", fraction=1.0)(X, generator=gen())
    assert out.accepted.nonzero().squeeze(1).tolist() == reference_signguard(X.numpy())
    assert not out.accepted[14:].any() and out.accepted[:14].sum() >= 10
    med = float(torch.linalg.vector_norm(X, dim=1).median())
    assert float(out.vector.norm()) <= med + 1e-6


# ------------------------------------------------------------------- clipped clustering
def test_average_linkage_equals_sklearn():
    from sklearn.cluster import AgglomerativeClustering

    from fedsec.strategies.clipped_clustering import average_linkage_labels

    for seed in range(10):
        X = torch.randn(13, 5, generator=gen(seed), dtype=torch.float64)
        X[:4] += 3
        D = torch.cdist(X, X)
        ours = average_linkage_labels(D, 2).numpy()
        theirs = AgglomerativeClustering(n_clusters=2, metric="precomputed", linkage="average").fit(D.numpy()).labels_
        same = (ours == theirs).all() or (ours == 1 - theirs).all()
        assert same, (seed, ours, theirs)


def test_clipped_clustering_hand_worked():
    U = torch.tensor([[1.0, 0.0], [2.0, 0.0], [4.0, 0.0], [0.0, -1.0], [0.0, -3.0]])
    # norms 1, 2, 4, 1, 3 -> tau = median 2; clipped (1,0),(2,0),(2,0),(0,-1),(0,-2);
    # cosine distance 0 within the groups, 1 across: the +x group wins, mean (5/3, 0)
    rule = get_aggregator("clipped_clustering")
    out = rule(U)
    assert out.accepted.tolist() == [True, True, True, False, False]
    torch.testing.assert_close(out.vector, torch.tensor([5 / 3, 0.0]))
    torch.testing.assert_close(rule.state["norms"], torch.tensor([1.0, 2.0, 4.0, 1.0, 3.0], dtype=torch.float64))
    # history: a round of tiny updates lowers the median of all norms seen to 1
    rule(0.01 * U)
    torch.testing.assert_close(rule(U).vector, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(get_aggregator("clipped_clustering", tau=1.0)(U).vector, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(get_aggregator("clipped_clustering", history=False)(U).vector,
                               torch.tensor([5 / 3, 0.0]))

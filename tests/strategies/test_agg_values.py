"""Hand-worked answers and Flower parity."""

import numpy as np
import pytest
import torch
from agg_helpers import gen, make, randn

from fedsec.strategies import get_aggregator


def test_median_known_columns_odd_and_even():
    U = torch.tensor([[1.0, 10.0], [3.0, -2.0], [2.0, 4.0], [100.0, 0.0]])
    out = get_aggregator("median")(U)
    torch.testing.assert_close(out.vector, torch.tensor([2.5, 2.0]))  # mean of the two middles
    out = get_aggregator("median")(U[:3])
    torch.testing.assert_close(out.vector, torch.tensor([2.0, 4.0]))
    U = torch.tensor([[1.0], [1.0], [1.0], [5.0]])  # tie at the lower middle
    torch.testing.assert_close(get_aggregator("median")(U).vector, torch.tensor([1.0]))


def test_median_matches_numpy():
    for n in (5, 6):
        U = randn(n, 40, seed=n)
        np.testing.assert_allclose(get_aggregator("median")(U).vector.numpy(),
                                   np.median(U.numpy(), axis=0), rtol=1e-6)


def test_trimmed_mean_examples():
    U = torch.full((7, 3), 2.5)
    torch.testing.assert_close(get_aggregator("trimmed_mean", f=3)(U).vector, torch.full((3,), 2.5))
    U = torch.tensor([[1.0], [2.0], [3.0], [4.0], [100.0]])
    torch.testing.assert_close(get_aggregator("trimmed_mean", f=1)(U).vector, torch.tensor([3.0]))
    torch.testing.assert_close(get_aggregator("trimmed_mean", beta=0.2)(U).vector, torch.tensor([3.0]))
    torch.testing.assert_close(get_aggregator("trimmed_mean", beta=0.19)(U).vector, torch.tensor([22.0]))


def test_mean_weighted():
    U = torch.tensor([[0.0, 1.0], [4.0, 5.0]])
    torch.testing.assert_close(get_aggregator("mean")(U, weights=torch.tensor([3, 1])).vector,
                               torch.tensor([1.0, 2.0]))


def test_krum_picks_tight_honest_cluster():
    honest = 5.0 + 0.01 * randn(9, 20, seed=1)
    outliers = torch.tensor([[-50.0] * 20, [60.0] * 20, [0.0] * 20])
    U = torch.cat([outliers[:2], honest, outliers[2:]])
    out = get_aggregator("krum", f=3)(U)
    i = int(out.accepted.nonzero())
    assert 2 <= i <= 10 and torch.equal(out.vector, U[i])
    assert out.scores[[0, 1, 11]].min() > out.scores[2:11].max()
    mk = get_aggregator("multikrum", f=3)(U)
    assert mk.accepted[2:11].all() and not mk.accepted[[0, 1, 11]].any()


def test_mad_rejects_planted_outlier():
    U = randn(10, 30, seed=2)
    U[4] *= 8
    for stat in ("norm", "distance_to_median"):
        out = get_aggregator("mad", statistic=stat)(U)
        assert not out.accepted[4] and out.accepted.sum() >= 8
        assert int(out.scores.argmax()) == 4


def test_mad_zero_mad_guard():
    U = torch.zeros(6, 3)
    U[5] = 1.0
    out = get_aggregator("mad")(U)
    assert bool(torch.isfinite(out.scores).all()) and not out.accepted[5]
    out = get_aggregator("mad")(torch.ones(4, 3))
    assert out.accepted.all()


def test_norm_clip_exact():
    U = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    out = get_aggregator("norm_clip", M=1.0)(U)
    torch.testing.assert_close(out.vector, torch.tensor([0.6 + 0.3, 0.8 + 0.4]) / 3)
    big = 100 * randn(5, 50)
    out = get_aggregator("norm_clip", M=2.0)(big, weights=torch.tensor([1, 0, 0, 0, 0]))
    assert abs(float(out.vector.norm()) - 2.0) < 1e-5


def test_norm_clip_noise_uses_generator():
    U = randn(4, 1000)
    a = get_aggregator("norm_clip", M=1.0, sigma=0.5)(U, generator=gen(1)).vector
    b = get_aggregator("norm_clip", M=1.0)(U).vector
    assert 0.4 < float((a - b).std()) < 0.6


def test_geomed_robust_and_weighted():
    U = torch.cat([randn(7, 5, seed=3) * 0.1, torch.full((3, 5), 1e3)])
    v = get_aggregator("geomed")(U).vector
    assert float(v.abs().max()) < 1.0
    v = get_aggregator("geomed")(torch.tensor([[0.0], [1.0], [2.0]]), weights=torch.tensor([1, 1, 5])).vector
    torch.testing.assert_close(v, torch.tensor([2.0]), atol=1e-4, rtol=0)


def test_centered_clip_bounded_step():
    U = torch.zeros(5, 2)
    U[0] = torch.tensor([1e4, 0.0])
    out = get_aggregator("centered_clip", tau=1.0, iters=3)(U)
    assert float(out.vector.norm()) <= 3 * 1.0 / 5 + 1e-6


def test_centered_clip_previous_state():
    rule = get_aggregator("centered_clip", tau=0.5, iters=1, start="previous")
    U = randn(6, 4)
    a = rule(U).vector
    b = rule(U).vector  # starts from a now
    assert not torch.equal(a, b) and "v" in rule.state
    rule.reset()
    torch.testing.assert_close(rule(U).vector, a)


def test_flame_rejects_opposite_cluster():
    base = torch.ones(1, 20)
    honest = base + 0.05 * randn(8, 20, seed=5)
    evil = -3 * base + 0.05 * randn(3, 20, seed=6)
    out = get_aggregator("flame", lam=0.0)(torch.cat([honest, evil]))
    # HDBSCAN may leave a few honest points as noise; the majority cluster is honest
    assert out.accepted[:8].sum() >= 6 and not out.accepted[8:].any()
    assert float(out.vector.norm()) <= float(honest.norm(dim=1).max()) + 1e-5


def test_foolsgold_downweights_sybils():
    honest = randn(6, 30, seed=7)
    sybil = torch.ones(1, 30) * 2 + 0.001 * randn(4, 30, seed=8)
    out = get_aggregator("foolsgold")(torch.cat([honest, sybil]))
    assert out.accepted[:6].all() and not out.accepted[6:].any()
    rule = get_aggregator("foolsgold", history=True)
    U = torch.cat([honest, sybil])
    rule(U)
    rule(U)
    torch.testing.assert_close(rule.state["H"], 2 * U)


# ---------------------------------------------------------------- Flower parity
flwr_strategy = pytest.importorskip("flwr.serverapp.strategy")


@pytest.mark.parametrize("n,f", [(100, 10), (64, 16), (20, 2), (101, 25)])
def test_trimmed_mean_both_paths_match_scipy_with_ties_and_outliers(n, f):
    """n >= 64 with few trimmed takes the topk-mask path, the rest the sort path."""
    from scipy.stats import trim_mean

    U = randn(n, 50, seed=n)
    U[3] = 1e30                 # a huge client is trimmed, never cancels the others
    U[:, 5] = 1.0               # an all-tied column
    U[: n // 2, 7] = 2.0        # half tied
    out = get_aggregator("trimmed_mean", f=f)(U).vector
    ref = torch.from_numpy(trim_mean(U.double().numpy(), f / n, axis=0)).float()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)

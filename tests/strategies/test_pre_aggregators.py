"""Pre-aggregators (nnm, bucketing, arc) and compose(): hand-worked values, ByzFL's
published examples, the registry-wide contract, and the mapping back to clients."""

import numpy as np
import pytest
import torch
from agg_helpers import PRE_PARAMS, gen, make, make_pre, randn

from fedsec.strategies import (
    PRE_AGGREGATORS,
    Composed,
    PreAggregation,
    compose,
    get_aggregator,
    get_pre_aggregator,
    register_pre_aggregator,
)
from fedsec.strategies.pre_aggregators import PreAggregator, map_back

BYZFL_X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
PRE_NAMES = PRE_AGGREGATORS.names()
# row i of the output is client i (so outputs permute with the inputs)
EQUIVARIANT = ["nnm", "arc"]
N, D = 12, 7


def test_registry_and_errors():
    assert set(PRE_NAMES) >= {"nnm", "bucketing", "arc"}
    with pytest.raises(KeyError, match="did you mean 'nnm'"):
        get_pre_aggregator("nmm")
    with pytest.raises(ValueError, match="already registered"):
        register_pre_aggregator("nnm")(PreAggregator)
    with pytest.raises(TypeError, match="unknown hyperparameter.*'g'.*valid ones: f"):
        get_pre_aggregator("nnm", g=1)
    with pytest.raises(ValueError, match=r"nnm.f: got -1, expected an integer >= 0"):
        get_pre_aggregator("nnm", f=-1)
    with pytest.raises(ValueError, match=r"bucketing.s: got 0, expected an integer >= 1"):
        get_pre_aggregator("bucketing", s=0)
    with pytest.raises(ValueError, match="NNM needs f < n"):
        get_pre_aggregator("nnm", f=3)(BYZFL_X)
    with pytest.raises(TypeError, match=r"pre_aggregators\[0\] must be a PreAggregator"):
        compose([get_aggregator("mean")], get_aggregator("mean"))


# ------------------------------------------------------------------ hand-worked / ByzFL
def test_nnm_byzfl_example_and_matrix():
    out = get_pre_aggregator("nnm", f=1)(BYZFL_X)
    # ByzFL's docstring: NNM(1) -> [[2.5,3.5,4.5],[2.5,3.5,4.5],[5.5,6.5,7.5]]
    torch.testing.assert_close(out.U, torch.tensor([[2.5, 3.5, 4.5], [2.5, 3.5, 4.5], [5.5, 6.5, 7.5]]))
    assert out.M.tolist() == [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]
    assert out.weights is None
    w = torch.tensor([1.0, 2.0, 3.0])
    assert get_pre_aggregator("nnm", f=1)(BYZFL_X, weights=w).weights.tolist() == [1.0, 2.0, 3.0]
    # f = 0: every row becomes the mean
    torch.testing.assert_close(get_pre_aggregator("nnm")(BYZFL_X).U, BYZFL_X.mean(0).expand(3, 3))


def test_nnm_matches_a_brute_force_reference():
    X = torch.randn(9, 6, generator=gen(1), dtype=torch.float64)
    f = 3
    D = torch.cdist(X, X).numpy()
    ref = np.stack([X.numpy()[np.argsort(D[i], kind="stable")[: 9 - f]].mean(0) for i in range(9)])
    np.testing.assert_allclose(get_pre_aggregator("nnm", f=f)(X).U.numpy(), ref, rtol=1e-10)


def test_arc_byzfl_example_and_count():
    from fedsec.strategies.pre_aggregators.arc import clipped_count

    out = get_pre_aggregator("arc", f=1)(BYZFL_X)
    # ByzFL's docstring: ARC(1): k = floor(2/3 * 2) = 1, the largest clipped to |x_2| = sqrt(77)
    expect = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [4.41004009, 5.04004582, 5.67005155]])
    torch.testing.assert_close(out.U, expect)
    torch.testing.assert_close(out.M, torch.diag(torch.tensor([1.0, 1.0, (77 / 194) ** 0.5], dtype=torch.float64)))
    assert [clipped_count(10, f) for f in range(6)] == [0, 1, 3, 4, 4, 5]   # floor(2 f (n - f) / n)
    assert clipped_count(4, 9) == 0
    torch.testing.assert_close(get_pre_aggregator("arc")(BYZFL_X).U, BYZFL_X)


def test_bucketing_follows_its_permutation():
    U = torch.arange(5.0)[:, None] * torch.ones(1, 2)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    out = get_pre_aggregator("bucketing", s=2)(U, weights=w, generator=gen(3))
    perm = torch.randperm(5, generator=gen(3))      # the draw the rule makes
    buckets = [perm[0:2], perm[2:4], perm[4:5]]     # ceil(5/2) = 3, the last of size 1
    torch.testing.assert_close(out.U, torch.stack([U[b].mean(0) for b in buckets]))
    assert out.weights.tolist() == [float(w[b].sum()) for b in buckets]
    assert out.M.sum(1).tolist() == [1.0, 1.0, 1.0] and (out.M > 0).sum(0).tolist() == [1] * 5
    # s = 1 only shuffles
    assert torch.equal(get_pre_aggregator("bucketing", s=1)(U, generator=gen(3)).U, U[perm])


# -------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", PRE_NAMES)
def test_pre_contract(name):
    U = randn(N, D)
    U0 = U.clone()
    w = torch.arange(1, N + 1, dtype=torch.float32)
    for weights in (None, w):
        out = make_pre(name)(U, weights=weights, generator=gen(1))
        assert isinstance(out, PreAggregation)
        k = out.U.shape[0]
        assert out.U.shape == (k, D) and out.U.dtype == torch.float32 and out.U.device == U.device
        assert out.M.shape == (k, N) and out.M.dtype == torch.float64
        torch.testing.assert_close(out.U, (out.M @ U.double()).float(), rtol=1e-5, atol=1e-6)
        if weights is None:
            assert out.weights is None
        else:
            assert out.weights.shape == (k,)
            assert float(out.weights.sum()) == pytest.approx(float(w.sum()))
    assert torch.equal(U, U0), "U modified in place"
    a, b = make_pre(name)(U, generator=gen(5)), make_pre(name)(U, generator=gen(5))
    assert torch.equal(a.U, b.U) and torch.equal(a.M, b.M)
    assert make_pre(name)(U.double(), generator=gen(5)).U.dtype == torch.float64
    with pytest.raises(ValueError, match="no finite client update"):
        make_pre(name)(torch.full((4, 3), float("nan")))


@pytest.mark.parametrize("name", PRE_NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_pre_drops_nonfinite_rows_before_mixing(name, bad):
    U = randn(N + 1, D, seed=4)
    U[5, 2] = bad
    out = make_pre(name)(U, generator=gen(2))
    assert bool(torch.isfinite(out.U).all())
    assert bool((out.M[:, 5] == 0).all())
    if name in EQUIVARIANT:   # same output as without the row (bucketing's draw depends on n)
        ref = make_pre(name)(torch.cat([U[:5], U[6:]]), generator=gen(2))
        torch.testing.assert_close(out.U, ref.U)
        torch.testing.assert_close(torch.cat([out.M[:, :5], out.M[:, 6:]], 1), ref.M)


@pytest.mark.parametrize("name", EQUIVARIANT)
def test_pre_permutation_equivariance(name):
    for seed in range(5):
        U = randn(N, D, seed)
        perm = torch.randperm(N, generator=gen(seed + 50))
        a = make_pre(name)(U, generator=gen(7))
        b = make_pre(name)(U[perm], generator=gen(7))
        torch.testing.assert_close(b.U, a.U[perm], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.M, a.M[perm][:, perm])


def test_bucketing_is_permutation_invariant_in_distribution():
    """Not per draw, but over draws: the multiset of bucket means of U and of U permuted
    have the same distribution; checked on the mean of the bucket means' first coordinate
    sorted, over 400 draws each."""
    U = randn(6, 3, seed=9)
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    pre = get_pre_aggregator("bucketing", s=2)
    g1, g2 = gen(1), gen(2)
    a = torch.stack([pre(U, generator=g1).U[:, 0].sort().values for _ in range(400)]).mean(0)
    b = torch.stack([pre(U[perm], generator=g2).U[:, 0].sort().values for _ in range(400)]).mean(0)
    torch.testing.assert_close(a, b, atol=0.08, rtol=0)


# --------------------------------------------------------------------------- compose
def test_map_back_hand_worked():
    M = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]], dtype=torch.float64)
    acc, sc = map_back(M, torch.tensor([True, False]), torch.tensor([2.0, 4.0]))
    # client 0 only in row 0; client 1 half in each; client 2 only in the rejected row;
    # client 3 in no row (a dropped non-finite input)
    assert acc.tolist() == [True, True, False, False]
    assert sc.tolist() == [2.0, 3.0, 4.0, float("inf")]
    acc, sc = map_back(M, torch.tensor([True, True]), torch.tensor([1.0, float("inf")]))
    assert sc.tolist() == [1.0, float("inf"), float("inf"), float("inf")]
    assert map_back(M, torch.tensor([False, True]), None)[1] is None


def test_compose_bucketing_then_krum_maps_to_the_chosen_bucket():
    U = randn(10, 5, seed=3)
    rule = compose([get_pre_aggregator("bucketing", s=2)], get_aggregator("krum", f=1))
    out = rule(U, generator=gen(4))
    pre = get_pre_aggregator("bucketing", s=2)(U, generator=gen(4))
    direct = get_aggregator("krum", f=1)(pre.U)   # krum draws nothing from the generator
    torch.testing.assert_close(out.vector, direct.vector)
    chosen = int(direct.accepted.nonzero())
    assert out.accepted.tolist() == (pre.M[chosen] > 0).tolist()
    assert isinstance(rule, Composed) and rule.name == "bucketing+krum"


def test_compose_chain_and_nonfinite_client():
    U = randn(10, 6, seed=5)
    U[2, 0] = float("nan")
    rule = compose([get_pre_aggregator("arc", f=2), get_pre_aggregator("nnm", f=2)], get_aggregator("median"))
    out = rule(U, generator=gen())
    assert out.accepted.shape == (10,) and not out.accepted[2] and out.scores is None
    assert bool(torch.isfinite(out.vector).all())
    arc = get_pre_aggregator("arc", f=2)(torch.cat([U[:2], U[3:]]))
    nnm = get_pre_aggregator("nnm", f=2)(arc.U)
    torch.testing.assert_close(out.vector, get_aggregator("median")(nnm.U).vector)
    out = compose([get_pre_aggregator("nnm", f=2)], get_aggregator("krum", f=2))(U)
    assert out.scores[2] == float("inf") and bool(torch.isfinite(out.scores[[0, 1, 3]]).all())


def test_compose_passes_the_reference():
    U = randn(9, 5, seed=6)
    g0 = U.mean(0)
    rule = compose([get_pre_aggregator("nnm", f=2)], get_aggregator("fltrust"))
    assert rule.needs_reference
    with pytest.raises(ValueError, match="FLTrust needs reference"):
        rule(U)
    out = rule(U, reference=g0)
    direct = get_aggregator("fltrust")(get_pre_aggregator("nnm", f=2)(U).U, reference=g0)
    torch.testing.assert_close(out.vector, direct.vector)
    # rules that do not need it ignore it
    plain = compose([get_pre_aggregator("nnm", f=2)], get_aggregator("mean"))
    assert not plain.needs_reference
    torch.testing.assert_close(plain(U, reference=g0).vector, plain(U).vector)


def test_nnm_helps_a_rule_against_a_spread_attack():
    """NNM's premise (Allouah et al. 2023): mixing with n - f neighbours pulls honest rows
    together, so a rule that picks one row (Krum) lands closer to the honest mean.
    Heterogeneous honest clients (spread 3) and 3 colluders placed just inside the honest
    spread, on one side; measured over 20 draws."""
    errs = {"krum": [], "nnm+krum": []}
    for seed in range(20):
        g = gen(seed)
        honest = 3 * torch.randn(12, 20, generator=g)
        mu = honest.mean(0)
        bad = (mu + 2.5 * honest.std(0)).expand(3, 20) + 0.01 * torch.randn(3, 20, generator=g)
        U = torch.cat([honest, bad])
        errs["krum"].append(float((get_aggregator("krum", f=3)(U).vector - mu).norm()))
        errs["nnm+krum"].append(float((compose([get_pre_aggregator("nnm", f=3)],
                                               get_aggregator("krum", f=3))(U).vector - mu).norm()))
    print({k: round(float(np.mean(v)), 3) for k, v in errs.items()})
    assert np.mean(errs["nnm+krum"]) < 0.6 * np.mean(errs["krum"])


@pytest.mark.parametrize("pre_name", PRE_NAMES)
@pytest.mark.parametrize("rule_name", ["mean", "median", "krum", "fltrust", "dnc", "signguard"])
def test_composed_rules_keep_the_rule_contract(pre_name, rule_name):
    U = randn(N, D, seed=11)
    U[3, 1] = float("inf")
    U0 = U.clone()
    kw = {"krum": {"f": 1}, "dnc": {"f": 1}}.get(rule_name, {})
    rule = compose([make_pre(pre_name, **({"f": 1} if "f" in PRE_PARAMS[pre_name] else {}))],
                   make(rule_name, **kw))
    a = rule(U, weights=torch.ones(N), generator=gen(1))
    b = rule(U, weights=torch.ones(N), generator=gen(1))
    assert a.vector.shape == (D,) and a.vector.dtype == torch.float32 and bool(torch.isfinite(a.vector).all())
    assert a.accepted.shape == (N,) and a.accepted.dtype == torch.bool and not a.accepted[3]
    assert a.scores is None or (a.scores.shape == (N,) and a.scores[3] == float("inf"))
    assert torch.equal(a.vector, b.vector) and torch.equal(a.accepted, b.accepted)
    assert torch.equal(U, U0)

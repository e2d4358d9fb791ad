"""Contract tests run over every registered aggregation rule."""

import pytest
import torch
from agg_helpers import PARAMS, gen, make, randn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsec.strategies import AGGREGATORS, AggregationResult, Aggregator, get_aggregator, register_aggregator

N, D = 12, 7
NAMES = AGGREGATORS.names()
# permutation invariance: every rule (foolsgold is stateless by default)
PERM_NAMES = NAMES
TRANSLATION = ["mean", "median", "trimmed_mean", "geomed", "krum", "multikrum", "bulyan",
               "filtering", "spectral", "centered_clip", "dnc", "mda", "meamed", "sever", "tukey"]
FAST = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_all_rules_registered():
    assert set(NAMES) >= {"mean", "median", "trimmed_mean", "geomed", "krum", "multikrum", "bulyan",
                          "centered_clip", "norm_clip", "flame", "foolsgold", "mad", "filtering",
                          "spectral", "dnc", "signguard", "clipped_clustering", "mda", "meamed",
                          "fltrust", "sever", "tukey"}


def test_import_does_not_import_flwr():
    import subprocess
    import sys

    code = "import sys, strategies; print('flwr' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", NAMES)
def test_output_contract(name):
    U = randn(N, D)
    U0 = U.clone()
    w = torch.arange(1, N + 1)
    for weights in (None, w, w.float()):
        out = make(name)(U, weights=weights, generator=gen(1))
        assert isinstance(out, AggregationResult)
        assert out.vector.shape == (D,) and out.vector.dtype == torch.float32
        assert out.vector.device == U.device and bool(torch.isfinite(out.vector).all())
        assert out.accepted.shape == (N,) and out.accepted.dtype == torch.bool
        assert out.scores is None or (out.scores.shape == (N,) and out.scores.device == U.device)
    assert torch.equal(U, U0), "U modified in place"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_generator(name):
    U = randn(N, D, seed=3)
    a, b = make(name)(U, generator=gen(5)), make(name)(U, generator=gen(5))
    assert torch.equal(a.vector, b.vector) and torch.equal(a.accepted, b.accepted)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_row_is_dropped(name, bad):
    U = randn(N + 1, D, seed=4)
    U[5, 2] = bad
    out = make(name)(U, generator=gen(2))
    ref = make(name)(torch.cat([U[:5], U[6:]]), generator=gen(2))
    assert not out.accepted[5]
    assert bool(torch.isfinite(out.vector).all())
    torch.testing.assert_close(out.vector, ref.vector, rtol=1e-5, atol=1e-6)
    assert torch.equal(torch.cat([out.accepted[:5], out.accepted[6:]]), ref.accepted)
    if out.scores is not None:
        assert out.scores[5] == float("inf")


def test_finite_rows_is_exact_when_a_row_sum_overflows():
    from fedsec.strategies.base import finite_rows

    U = torch.zeros(5, 4)
    U[0] = 3e38                      # finite entries, float32 row sum overflows to inf
    U[1, 1], U[1, 2] = float("inf"), float("-inf")   # sum is NaN
    U[2, 3] = float("nan")
    U[3, 0] = -float("inf")
    assert finite_rows(U).tolist() == [True, False, False, False, True]
    assert finite_rows(U).tolist() == torch.isfinite(U).all(dim=1).tolist()


def test_all_rows_nonfinite_is_an_error():
    with pytest.raises(ValueError, match="no finite"):
        make("mean")(torch.full((3, 2), float("nan")))


@pytest.mark.parametrize("bad_U", [torch.zeros(3), torch.zeros(3, 2, dtype=torch.int64)])
def test_bad_input_errors(bad_U):
    with pytest.raises((TypeError, ValueError)):
        make("mean")(bad_U)


def test_bad_weights_errors():
    U = randn(4, 3)
    with pytest.raises(ValueError, match="shape"):
        make("mean")(U, weights=torch.ones(3))
    with pytest.raises(ValueError, match=">= 0"):
        make("mean")(U, weights=torch.tensor([1.0, -1.0, 1.0, 1.0]))


@pytest.mark.parametrize("name", PERM_NAMES)
@FAST
@given(seed=st.integers(0, 2**16), perm_seed=st.integers(0, 2**16), scale=st.sampled_from([1e-2, 1.0, 1e3]))
def test_permutation_invariance(name, seed, perm_seed, scale):
    U = randn(N, D, seed) * scale
    perm = torch.randperm(N, generator=gen(perm_seed))
    a = make(name)(U, generator=gen(7))
    b = make(name)(U[perm], generator=gen(7))
    torch.testing.assert_close(b.vector, a.vector, rtol=1e-4, atol=1e-4 * scale)
    assert torch.equal(b.accepted, a.accepted[perm])


@pytest.mark.parametrize("name", TRANSLATION)
@FAST
@given(seed=st.integers(0, 2**16), shift=st.floats(-20, 20))
def test_translation_equivariance(name, seed, shift):
    U = randn(N, D, seed)
    c = torch.randn(D, generator=gen(seed + 1)) * shift
    a = make(name)(U, generator=gen(7))
    b = make(name)(U + c, generator=gen(7))
    torch.testing.assert_close(b.vector, a.vector + c, rtol=1e-4, atol=1e-3 * (1 + abs(shift)))


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError) as e:
        get_aggregator("krumm")
    assert "did you mean 'krum'" in str(e.value) and "median" in str(e.value)


def test_unknown_hyperparameter_names_it_and_lists_valid():
    with pytest.raises(TypeError) as e:
        get_aggregator("krum", g=2)
    assert "'g'" in str(e.value) and "valid ones: f" in str(e.value)


@pytest.mark.parametrize("name,kw", [("krum", {"f": -1}), ("trimmed_mean", {"f": 1, "beta": 0.1}),
                                     ("trimmed_mean", {}), ("trimmed_mean", {"beta": 0.5}),
                                     ("geomed", {"nu": 0}), ("mad", {"statistic": "l1"}),
                                     ("spectral", {"eps": 0.7}), ("norm_clip", {"M": 0}),
                                     ("bulyan", {"f": 1.5})])
def test_bad_hyperparameter_value(name, kw):
    with pytest.raises(ValueError) as e:
        get_aggregator(name, **kw)
    assert any(k in str(e.value) for k in kw) or "exactly one" in str(e.value)


def test_rules_are_frozen():
    rule = get_aggregator("krum", f=1)
    with pytest.raises(Exception):
        rule.f = 3


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_aggregator("mean")(Aggregator)


@pytest.mark.parametrize("name,kw,n_ok", [("krum", {"f": 2}, 7), ("multikrum", {"f": 2}, 7),
                                          ("bulyan", {"f": 2}, 11), ("trimmed_mean", {"f": 2}, 5)])
def test_too_few_clients(name, kw, n_ok):
    rule = get_aggregator(name, **kw)
    rule(randn(n_ok, 3))
    with pytest.raises(ValueError, match=str(n_ok - 1)):
        rule(randn(n_ok - 1, 3))
    U = randn(n_ok, 3)
    U[0, 0] = float("nan")  # counted after dropping non-finite rows
    with pytest.raises(ValueError):
        rule(U)


def test_params_cover_only_registered():
    assert set(PARAMS) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_reference_is_required_or_ignored(name):
    """Rules with needs_reference refuse a call without one (naming it); the others give the
    same result with or without a reference."""
    U = randn(N, D, seed=8)
    rule = get_aggregator(name, **PARAMS.get(name, {}))
    ref = torch.randn(D, generator=gen(9))
    if rule.needs_reference:
        with pytest.raises(ValueError, match="reference"):
            rule(U, generator=gen(1))
        out = rule(U, generator=gen(1), reference=ref)
        assert out.vector.shape == (D,)
    else:
        a = get_aggregator(name, **PARAMS.get(name, {}))(U, generator=gen(1))
        b = get_aggregator(name, **PARAMS.get(name, {}))(U, generator=gen(1), reference=ref)
        assert torch.equal(a.vector, b.vector) and torch.equal(a.accepted, b.accepted)


# -- moved from the former test_rules.py (its other tests repeated this file, test_agg_values.py
# and test_agg_robust.py) ------------------------------------------------------------------------
from agg_helpers import with_reference  # noqa: E402

KW = {"krum": {"f": 2}, "multikrum": {"f": 2}, "bulyan": {"f": 2}, "trimmed_mean": {"f": 2},
      "filtering": {"eps": 0.2}, "spectral": {"eps": 0.2}, "norm_clip": {"M": 5.0},
      "dnc": {"f": 2}, "mda": {"f": 2}, "meamed": {"f": 2}}


def rule(name, **extra):
    return with_reference(get_aggregator(name, **{**KW.get(name, {}), **extra}))


def sample(n=12, d=30, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_float64_input_and_all_nan_error(name):
    U = sample().double()
    assert rule(name)(U, generator=gen(1)).vector.dtype == torch.float32
    with pytest.raises(ValueError, match="no finite client update"):
        rule(name)(torch.full((12, 3), float("nan")))


def test_parameter_validation_and_client_counts():
    with pytest.raises(ValueError, match=r"krum.f: got -1, expected an integer >= 0"):
        get_aggregator("krum", f=-1)
    with pytest.raises(ValueError, match=r"Krum needs n > 2f \+ 2 with f=3"):
        get_aggregator("krum", f=3)(torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"Bulyan needs n >= 4f \+ 3 with f=2"):
        get_aggregator("bulyan", f=2)(torch.randn(10, 3))
    with pytest.raises(ValueError, match="exactly one of f or beta"):
        get_aggregator("trimmed_mean", f=1, beta=0.1)
    with pytest.raises(TypeError, match="unknown hyperparameter.*'ff'.*valid ones: f"):
        get_aggregator("krum", ff=1)

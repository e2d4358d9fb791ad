"""Statistical robustness: epsilon-corrupted Gaussian mean estimation and bounded influence."""

import math

import torch
from agg_helpers import gen, randn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsec.strategies import get_aggregator


def test_robust_mean_filtering_and_spectral():
    n, d, eps = 2000, 100, 0.1
    g = gen(0)
    mu = torch.randn(d, generator=g)
    n_bad = int(eps * n)
    clean = mu + torch.randn(n - n_bad, d, generator=g)
    v = torch.randn(d, generator=g)
    v /= v.norm()
    bad = mu + 10.0 * v + 0.1 * torch.randn(n_bad, d, generator=g)  # tight cluster at |x - mu| ~ sqrt(d)
    U = torch.cat([clean, bad])[torch.randperm(n, generator=g)]

    def err(x):
        return float((x - mu).norm())

    e_clean, e_mean = err(clean.mean(0)), err(U.mean(0))
    e_filt = err(get_aggregator("filtering", eps=eps)(U, generator=gen(1)).vector)
    e_spec = err(get_aggregator("spectral", eps=eps)(U).vector)
    e_med = err(get_aggregator("median")(U).vector)
    e_geo = err(get_aggregator("geomed")(U).vector)
    print(f"clean {e_clean:.3f} mean {e_mean:.3f} filtering {e_filt:.3f} spectral {e_spec:.3f} "
          f"median {e_med:.3f} geomed {e_geo:.3f}")
    assert e_mean > 0.8
    for e in (e_filt, e_spec):
        assert e <= 1.5 * e_clean + 0.05 and e < e_mean / 3
    # coordinate-wise median pays ~ eps sqrt(d); with the outliers at distance
    # ~sqrt(d) both the coordinate-wise and the geometric median land on the far
    # side of the plain mean (observed with this seed: see the printed line)
    assert e_med > e_mean
    assert e_geo > e_mean


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16), bad=st.sampled_from([1e30, -1e30, float("nan")]),
       where=st.integers(0, 11), name=st.sampled_from(["median", "krum", "filtering"]))
def test_single_client_bounded_influence(seed, bad, where, name):
    U = randn(12, 6, seed)
    honest = torch.cat([U[:where], U[where + 1:]])
    U[where] = bad
    kw = {"krum": {"f": 2}, "filtering": {"eps": 0.2}}.get(name, {})
    out = get_aggregator(name, **kw)(U, generator=gen(3)).vector
    lo, hi = honest.min(0).values, honest.max(0).values
    assert bool(torch.isfinite(out).all())
    assert bool((out >= lo - 1e-5).all() and (out <= hi + 1e-5).all())
    assert not math.isnan(float(out.sum()))

"""Issue 19, items 1-2: FLAME's precomputed distance matrix is exactly symmetric, and
FoolsGold's pardoning matches the authors' code (DistributedML/FoolsGold,
deep-fg/fg/foolsgold.py)."""

import numpy as np
import pytest
import torch
from agg_helpers import gen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsec.strategies import get_aggregator
from fedsec.strategies._functional import cosine_matrix
from fedsec.strategies.flame import cosine_distances, distances_from_cosines, majority_cluster
from fedsec.strategies.foolsgold import cosine_similarities, foolsgold_weights


# ------------------------------------------------------------------------------------ FLAME
def _updates(n, d, spread, seed, dtype=torch.float32):
    """Near-parallel updates (a shared direction plus noise of relative size ``spread``),
    the regime of a converging model where cosine distances are ~1e-3 and a one-ulp
    asymmetry of a float32 Gram matrix broke HDBSCAN's symmetry check."""
    g = gen(seed)
    base = torch.randn(d, generator=g, dtype=dtype)
    return base + spread * torch.randn(n, d, generator=g, dtype=dtype)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 16), d=st.sampled_from([2, 7, 100, 4096, 40_000, 43_210]),
       spread=st.sampled_from([1e-4, 1e-2, 0.05, 1.0]), seed=st.integers(0, 2**16),
       zero_row=st.booleans(), duplicate=st.booleans())
def test_flame_never_raises_and_distances_are_exactly_symmetric(n, d, spread, seed, zero_row, duplicate):
    U = _updates(n, d, spread, seed)
    if zero_row:
        U[0] = 0
    if duplicate:
        U[-1] = U[1]
    C = cosine_distances(U)
    assert torch.equal(C, C.T) and bool((C.diagonal() == 0).all())
    out = get_aggregator("flame", lam=0.0)(U, generator=gen(1))
    assert out.accepted.any() and bool(torch.isfinite(out.vector).all())


def test_one_ulp_asymmetric_gram_would_break_hdbscan_and_is_symmetrised():
    """The premise (a sklearn check, not a rule detail) and the fix: a float32 Gram matrix
    whose G_ij and G_ji differ by one ulp (what cuBLAS and some CPU BLAS kernels
    return; this machine's MKL happens to be symmetric) gives cosine distances that
    HDBSCAN(metric='precomputed') rejects; distances_from_cosines makes them symmetric."""
    from sklearn.cluster import HDBSCAN

    U = _updates(8, 40_000, 0.05, seed=0)
    G = U @ U.T
    up = torch.triu(torch.ones(8, 8, dtype=torch.bool), 1)
    G_bad = torch.where(up, torch.nextafter(G, torch.full_like(G, float("inf"))), G).double()
    nrm = G_bad.diagonal().sqrt()
    cos_bad = G_bad / (nrm[:, None] * nrm[None, :])
    C_old = 1 - cos_bad                       # what the rule built before the fix
    C_old.fill_diagonal_(0)
    with pytest.raises(ValueError, match="symmetric"):
        HDBSCAN(min_cluster_size=5, min_samples=1, metric="precomputed", copy=True).fit(C_old.numpy())
    C = distances_from_cosines(cos_bad)
    assert torch.equal(C, C.T)
    assert majority_cluster(C).sum() >= 5
    assert majority_cluster(C_old).sum() >= 5   # the consumer symmetrises too


def test_cosine_matrix_matches_sklearn_and_zero_rows():
    from sklearn.metrics.pairwise import cosine_similarity

    U = torch.randn(6, 50, generator=gen(2), dtype=torch.float64)
    U[3] = 0
    ours = cosine_matrix(U)
    np.testing.assert_allclose(ours.numpy(), cosine_similarity(U.numpy()), atol=1e-12)
    assert torch.equal(ours, ours.T) and ours[3, 3] == 0 and ours[0, 0] == 1


# ------------------------------------------------------------------------------- FoolsGold
def reference_foolsgold(grads: np.ndarray) -> np.ndarray:
    """A straightforward re-derivation of the authors' foolsgold(grads) (double loop,
    numpy), written from their code's steps: cs - I, pardoning, 1 - max, logit."""
    n = grads.shape[0]
    nr = np.linalg.norm(grads, axis=1)
    cs = grads @ grads.T / np.outer(nr, nr) - np.eye(n)
    # cs - I is meant to zero the diagonal; in floating point x.x / |x|^2 - 1 can be
    # -1e-16, which the pardoning would then divide by a 0 row maximum (the authors'
    # sklearn-based code has the same fragility), so the intent is written exactly
    np.fill_diagonal(cs, 0.0)
    maxcs = cs.max(axis=1)
    for i in range(n):
        for j in range(n):
            if i != j and maxcs[i] < maxcs[j]:
                cs[i, j] *= maxcs[i] / maxcs[j]
    wv = np.clip(1 - cs.max(axis=1), 0, 1)
    wv = wv / wv.max()
    wv[wv == 1] = 0.99
    with np.errstate(divide="ignore"):
        wv = np.log(wv / (1 - wv)) + 0.5
    wv[np.isinf(wv) + wv > 1] = 1
    wv[wv < 0] = 0
    return wv


def test_negative_best_similarity_gets_weight_one_like_the_reference():
    # client 2 is unlike both others (best cosine -0.856 < 0): not a sybil by
    # FoolsGold's logic. Hand-worked: cs - I rows A [0, .8, -.995], B [.8, 0, -.856],
    # C [-.995, -.856, 0]; v = [.8, .8, 0]; row C pardoned to 0 -> alpha = [.2, .2, 1]
    # -> [.2, .2, .99] -> logit + .5 = [-.886, -.886, 5.1] -> [0, 0, 1].
    U = torch.tensor([[1.0, 0.0], [0.8, 0.6], [-1.0, -0.1]], dtype=torch.float64)
    w = foolsgold_weights(cosine_similarities(U), 1.0)
    assert w.tolist() == [0.0, 0.0, 1.0]                 # before the fix: [1, 1, 0]
    np.testing.assert_allclose(w.numpy(), reference_foolsgold(U.numpy()), atol=1e-12)
    out = get_aggregator("foolsgold")(U)
    assert out.accepted.tolist() == [False, False, True]
    torch.testing.assert_close(out.vector, U[2].float())


def test_sybils_honest_and_one_opposed_client_match_the_reference():
    g = gen(3)
    common = torch.randn(50, generator=g, dtype=torch.float64)
    honest = common + torch.randn(6, 50, generator=g, dtype=torch.float64)
    sybil = torch.ones(50, dtype=torch.float64) + 0.01 * torch.randn(4, 50, generator=g, dtype=torch.float64)
    opposed = -(common / common.norm() + sybil.mean(0) / sybil.mean(0).norm())[None]
    U = torch.cat([honest, sybil, opposed])
    cs = cosine_similarities(U)
    assert float(cs[-1, :-1].max()) < 0              # the opposed client's best similarity is negative
    w = foolsgold_weights(cs, 1.0)
    np.testing.assert_allclose(w.numpy(), reference_foolsgold(U.numpy()), atol=1e-9)
    assert w[6:10].max() == 0 and w[10] == 1 and w[:6].min() > 0.3
    # before the fix the honest clients all got 1 (alphas normalised by the opposed
    # client's sign-flipped pardoned value): [1]*6 + [0]*4 + [1]
    assert not torch.allclose(w[:6], torch.ones(6, dtype=w.dtype))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 9), d=st.integers(2, 12), seed=st.integers(0, 2**16))
def test_foolsgold_equals_reference_on_random_updates(n, d, seed):
    U = torch.randn(n, d, generator=gen(seed), dtype=torch.float64)
    ref = reference_foolsgold(U.numpy())
    if not np.isfinite(ref).all():      # the reference divides by 0 when every alpha is 0
        return
    np.testing.assert_allclose(foolsgold_weights(cosine_similarities(U), 1.0).numpy(), ref, atol=1e-9)

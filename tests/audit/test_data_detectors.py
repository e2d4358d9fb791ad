"""Data detectors' mechanics on planted activations: 2-means split, spectral removal, the DCT."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fedsec.audit import AuditTarget, get_detector
from fedsec.audit.activation_clustering import split_class
from fedsec.audit.frequency import FrequencyDetector, dct2, dct_matrix, idct2, random_blend, random_patch
from fedsec.audit.spectral_signatures import remove_top
from fedsec.data import TensorData

D = 16


def feature_model(d: int = D, classes: int = 3) -> nn.Module:
    """Penultimate features = the input itself: x (N, 1, 1, d) -> Flatten -> head."""
    return nn.Sequential(nn.Flatten(), nn.Linear(d, classes))


def planted(n_per_class: int = 150, n_bad: int = 30, shift: float = 3.0, classes: int = 3, seed: int = 0,
            same: bool = False):
    """Gaussian features per label (``same``: every label the very same samples); the first
    ``n_bad`` samples of label 0 shifted by ``shift`` in every dimension."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n_per_class, D, generator=g)
    x = torch.cat([base if same else torch.randn(n_per_class, D, generator=g) for _ in range(classes)])
    y = torch.arange(classes).repeat_interleave(n_per_class)
    bad = torch.zeros(len(y), dtype=torch.bool)
    bad[:n_bad] = True
    x[:n_bad] += shift  # along (1, ..., 1): a shift of norm 4 * shift
    return TensorData(x[:, None, None, :], y), bad


def target_for(data: TensorData, poisoned=None, seed: int = 0) -> AuditTarget:
    classes = int(data.y.max()) + 1
    return AuditTarget(model=feature_model(classes=classes), clean=data, data=data, poisoned=poisoned,
                       num_classes=classes, in_shape=(1, 1, D), generator=torch.Generator().manual_seed(seed))


def test_two_means_split_separable_activations():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(50, D, generator=g)
    b = torch.randn(10, D, generator=g) + 3.0
    res = split_class(torch.cat([a, b]), dims=10, method="pca", seed=0)
    assert res["small"].tolist() == [False] * 50 + [True] * 10
    assert res["relative_size"] == pytest.approx(10 / 60)
    assert res["silhouette"] > 0.3


def test_ica_split_finds_the_planted_cluster_in_most_draws():
    # FastICA returns unit-variance sources, so the planted shift no longer dominates by
    # scale and 2-means sometimes splits a noise component instead: measured 7/10 draws
    # at this size (PCA: 10/10). The paper's ICA pipeline is kept; this pins its rate.
    exact = 0
    for s in range(10):
        g = torch.Generator().manual_seed(s)
        x = torch.randn(150, D, generator=g)
        x[:30] += 3.0
        res = split_class(x, dims=10, method="ica", seed=s)
        exact += int(res["small"][:30].all() and not res["small"][30:].any())
    assert exact >= 6


def test_two_means_on_one_blob_has_low_silhouette():
    g = torch.Generator().manual_seed(2)
    res = split_class(torch.randn(80, D, generator=g), dims=10, method="pca", seed=0)
    assert res["silhouette"] < 0.3


def test_activation_clustering_removes_planted_cluster():
    data, bad = planted()
    r = get_detector("activation_clustering", reduce="pca").audit(target_for(data, bad))
    assert r.flagged and r.target == 0
    assert r.figures["recall"] == 1.0 and r.figures["clean_removed"] == 0.0
    assert r.figures["per_class"]["0"]["poisonous"] and not r.figures["per_class"]["1"]["poisonous"]
    assert r.score == pytest.approx(1 - 30 / 150)


def test_activation_clustering_silhouette_mode_spares_clean_labels():
    data, bad = planted(n_bad=0)
    r = get_detector("activation_clustering", analysis="silhouette", reduce="pca").audit(target_for(data, bad))
    assert not r.flagged and r.figures["n_removed"] == 0 and r.score == 0.0


def test_remove_top_counts_floor_of_one_and_a_half_eps():
    s = torch.arange(20.0)
    out = remove_top(s, 0.1)  # floor(1.5 * 0.1 * 20) = 3
    assert out.nonzero().flatten().tolist() == [17, 18, 19]
    assert remove_top(s, 0.01).sum() == 0  # floor(0.3) = 0


def test_spectral_signatures_removes_planted_and_flags_target():
    data, bad = planted(n_bad=20, shift=2.0, classes=10)
    r = get_detector("spectral_signatures", eps=0.15).audit(target_for(data, bad))  # floor(1.5*0.15*150) = 33
    assert r.figures["n_removed"] == 10 * 33
    assert r.figures["recall"] == 1.0
    assert r.figures["clean_removed"] == pytest.approx((330 - 20) / (1500 - 20))
    assert r.flagged and r.target == 0
    shares = [r.figures["per_class"][str(c)]["top_share"] for c in range(10)]
    assert shares[0] == max(shares)


def test_spectral_signatures_never_flags_identical_labels():
    # every label holds the same activations: equal shares, zero spread, index 0 everywhere
    data, bad = planted(n_bad=0, classes=10, same=True)
    r = get_detector("spectral_signatures", eps=0.1).audit(target_for(data, bad))
    assert not r.flagged and r.target is None and r.score == 0.0
    assert r.figures["recall"] is None  # no poisons: recall undefined (null in JSON)


def test_spectral_signatures_gives_no_verdict_on_few_labels():
    data, bad = planted(n_bad=30, shift=3.0, classes=3)
    r = get_detector("spectral_signatures", eps=0.15).audit(target_for(data, bad))
    assert not r.flagged and r.figures["recall"] == 1.0  # still filters every label


def test_data_detector_without_data_is_a_clear_error():
    data, _ = planted()
    t = AuditTarget(model=feature_model(), clean=data, num_classes=3, in_shape=(1, 1, D),
                    generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="--data"):
        get_detector("spectral_signatures").audit(t)


# -- the DCT ------------------------------------------------------------------------------


def test_dct_matrix_is_orthonormal():
    for n in (1, 8, 32):
        d = dct_matrix(n)
        assert torch.allclose(d @ d.T, torch.eye(n, dtype=torch.float64), atol=1e-12)


def test_dct2_matches_scipy_and_inverts():
    from scipy.fft import dctn

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 8, 12, generator=g, dtype=torch.float64)
    c = dct2(x)
    ref = dctn(x.numpy(), axes=(-2, -1), norm="ortho")
    assert torch.allclose(c, torch.from_numpy(ref), atol=1e-12)
    assert torch.allclose(idct2(c), x, atol=1e-12)
    # orthonormal: energy preserved (Parseval)
    assert torch.allclose((c**2).sum((-2, -1)), (x**2).sum((-2, -1)))


def test_dct2_of_constant_is_dc_only():
    x = torch.full((1, 4, 4), 0.5, dtype=torch.float64)
    c = dct2(x)
    assert float(c[0, 0, 0]) == pytest.approx(0.5 * 4)  # sqrt(H W) * mean
    assert float(c.abs().sum() - c[0, 0, 0].abs()) == pytest.approx(0, abs=1e-12)


def test_self_made_triggers_leave_input_and_stay_in_range():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=g)
    before = x.clone()
    p = random_patch(x, 0.25, g)
    b = random_blend(x, (0.05, 0.3), g)
    assert torch.equal(x, before)
    changed = (p != x).flatten(2).any(1).sum(1)  # pixels touched per image
    assert int(changed.max()) <= 4 and int(changed.min()) >= 0  # side <= round(0.25 * 8) = 2
    assert float(p.min()) >= 0 and float(p.max()) <= 1 and float(b.min()) >= 0 and float(b.max()) <= 1
    assert bool(((b - x).abs().flatten(1).amax(1) > 0).all())


def test_frequency_detector_flags_blended_data():
    g = torch.Generator().manual_seed(0)
    # smooth clean images: low-frequency gradients with random phase
    t = torch.linspace(0, 1, 8)
    phase = torch.rand(200, 1, 1, 1, generator=g)
    clean = (0.5 + 0.4 * torch.sin(6 * (t[None, None, :, None] + t[None, None, None, :]) + 6 * phase)).clamp(0, 1)
    audited = clean[:60].clone()
    noise = torch.rand(20, 1, 8, 8, generator=g)
    audited[:20] = 0.7 * audited[:20] + 0.3 * noise  # 20 noise-blended samples
    bad = torch.zeros(60, dtype=torch.bool)
    bad[:20] = True
    tgt = AuditTarget(model=nn.Linear(1, 1), clean=TensorData(clean[60:], torch.zeros(140, dtype=torch.long)),
                      data=TensorData(audited, torch.zeros(60, dtype=torch.long)), poisoned=bad, num_classes=2,
                      in_shape=(1, 8, 8), generator=torch.Generator().manual_seed(1))
    r = FrequencyDetector(epochs=8, copies=2, families=["blend"]).audit(tgt)
    assert r.flagged and r.target == 0
    assert r.figures["recall"] >= 0.9 and r.figures["clean_removed"] <= 0.1


@pytest.mark.parametrize("kw, field", [({"families": ["wave"]}, "families"), ({"blend_alpha": [0.5, 0.1]}, "blend_alpha"),
                                       ({"threshold": 1.0}, "threshold"), ({"target_fpr": 0.1, "val_fraction": 0.0},
                                                                           "target_fpr")])
def test_frequency_bad_params_name_the_field(kw, field):
    with pytest.raises(ValueError, match=f"frequency.{field}"):
        FrequencyDetector(**kw)


def test_ica_survives_dead_units_and_rank_below_dims():
    # ReLU features: most units dead, the class spans 4 directions (< nb_dims = 10)
    g = torch.Generator().manual_seed(3)
    feats = torch.zeros(75, 64)
    feats[:, :4] = torch.randn(75, 4, generator=g).clamp_min(0)
    feats[:15, :4] += 4.0
    res = split_class(feats, dims=10, method="ica", seed=1921255282)
    assert res["small"][:15].all() and not res["small"][15:].any()
    assert math.isfinite(res["silhouette"])

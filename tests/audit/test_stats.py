"""The statistics behind the verdicts: median/MAD anomaly index, spectral scores, AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsec.audit.stats import (
    MAD_CONSISTENCY,
    anomaly_index,
    auc,
    mad,
    median,
    min_index_null,
    min_index_p_value,
    min_index_threshold,
    top_direction_scores,
)


def test_mad_anomaly_index_hand_worked():
    # Ten reversed-trigger norms, one small (a backdoor's shortcut). Sorted:
    # 3, 9, 10, 10, 11, 11, 12, 12, 13, 14 -> median (11 + 11) / 2 = 11.
    # |x - 11|: 8, 2, 1, 1, 0, 0, 1, 1, 2, 3 -> sorted 0 0 1 1 1 1 2 2 3 8 -> median 1.
    # MAD = 1.4826 * 1; index of the 3: (11 - 3) / 1.4826 = 5.3959...
    norms = torch.tensor([10.0, 12.0, 3.0, 11.0, 14.0, 9.0, 13.0, 11.0, 10.0, 12.0])
    assert float(median(norms)) == 11.0
    assert float(mad(norms)) == pytest.approx(1.4826)
    idx = anomaly_index(norms)
    assert float(idx[2]) == pytest.approx(8 / 1.4826)
    assert float(idx[2]) > 2  # flagged, class 2 is the target
    assert float(idx[4]) == pytest.approx(-3 / 1.4826)  # large norms have negative (never flagged) index
    assert int(torch.argmax(idx)) == 2


def test_anomaly_index_clean_profile_is_below_two():
    norms = torch.tensor([10.0, 11.0, 12.0, 9.5, 10.5, 11.5, 12.5, 9.0, 10.2, 11.8])
    assert float(anomaly_index(norms).max()) < 2


def test_anomaly_index_high_side_and_zero_mad():
    v = torch.tensor([1.0, 1.0, 1.0, 1.0, 5.0])
    hi = anomaly_index(v, side="high")
    assert math.isinf(float(hi[4])) and float(hi[:4].abs().sum()) == 0
    lo = anomaly_index(v, side="low")
    assert float(lo.max()) == 0  # nothing below the median
    with pytest.raises(ValueError, match="side"):
        anomaly_index(v, side="both")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=30))
def test_median_and_mad_match_numpy(values):
    v = torch.tensor(values, dtype=torch.float64)
    assert float(median(v)) == pytest.approx(float(np.median(values)), abs=1e-9)
    ref = MAD_CONSISTENCY * np.median(np.abs(np.array(values) - np.median(values)))
    assert float(mad(v)) == pytest.approx(float(ref), abs=1e-9)


def test_median_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        median(torch.empty(0))


def test_min_of_c_null_matches_a_direct_simulation():
    # independent reference: the per-draw anomaly_index (the detector's own code path) on
    # fresh normal norms from another generator; 3000 draws, standard error <= 0.0087
    g = torch.Generator().manual_seed(7)
    for n in (5, 10):
        direct = sum(float(anomaly_index(torch.randn(n, generator=g, dtype=torch.float64)).max()) > 2.0
                     for _ in range(3000)) / 3000
        assert min_index_p_value(2.0, n) == pytest.approx(direct, abs=0.035)
    # the paper's "2 = 95%" is for one value; the smallest of 10 passes it about a third of the time
    assert 0.30 < min_index_p_value(2.0, 10) < 0.36


def test_min_of_c_threshold_gives_its_false_positive_rate():
    for n, fpr in ((10, 0.05), (10, 0.10), (43, 0.05)):
        cut = min_index_threshold(n, fpr)
        assert cut > 2.0
        assert min_index_p_value(cut, n) == pytest.approx(fpr, abs=0.002)
    assert min_index_threshold(10, 0.01) > min_index_threshold(10, 0.05) > min_index_threshold(10, 0.10)
    null = min_index_null(10)
    assert bool((null[1:] >= null[:-1]).all()) and null.dtype == torch.float64
    assert min_index_null(10) is null  # computed once per class count
    with pytest.raises(ValueError, match="fpr"):
        min_index_threshold(10, 0.0)
    with pytest.raises(ValueError, match="at least 3"):
        min_index_null(2)


def test_svd_score_recovers_planted_direction():
    g = torch.Generator().manual_seed(0)
    d, n_clean, n_bad = 20, 90, 10
    u = torch.zeros(d)
    u[3] = 1.0
    clean = torch.randn(n_clean, d, generator=g) * 0.5
    bad = torch.randn(n_bad, d, generator=g) * 0.5 + 6 * u  # a subpopulation shifted along u
    reps = torch.cat([clean, bad])
    tau, s = top_direction_scores(reps)
    # the top singular vector is (up to sign) the planted direction
    centred = (reps - reps.mean(0)).double()
    v = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    assert abs(float(v[3])) > 0.95
    # scores are squared projections; every planted sample outranks every clean one
    assert torch.allclose(tau, (centred @ v) ** 2)
    assert float(tau[n_clean:].min()) > float(tau[:n_clean].max())
    assert torch.all(s[:-1] >= s[1:])


def test_svd_score_rejects_single_sample():
    with pytest.raises(ValueError, match="n >= 2"):
        top_direction_scores(torch.zeros(1, 4))


def test_auc_hand_worked():
    assert auc(torch.tensor([0.9, 0.8]), torch.tensor([0.1, 0.2])) == 1.0
    assert auc(torch.tensor([0.1]), torch.tensor([0.9])) == 0.0
    # pairs: (0.5 vs 0.5) tie = 1/2, (0.5 vs 0.1) = 1, (0.9 vs both) = 2 -> 3.5 / 4
    assert auc(torch.tensor([0.5, 0.9]), torch.tensor([0.5, 0.1])) == pytest.approx(3.5 / 4)
    assert math.isnan(auc(torch.tensor([]), torch.tensor([0.1])))

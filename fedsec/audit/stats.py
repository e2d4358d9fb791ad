"""Small pure statistics shared by the detectors (torch, any device)."""

from __future__ import annotations

import torch

MAD_CONSISTENCY = 1.4826
"""1 / Phi^-1(3/4): makes the MAD a consistent estimator of a normal sigma (Neural Cleanse uses it)."""


def median(v: torch.Tensor) -> torch.Tensor:
    """Median of a 1-D tensor with numpy semantics (mean of the two middle values for even n).

    ``torch.median`` returns the lower middle value; the Neural Cleanse reference code
    uses ``np.median``, and with 10 classes the difference matters.
    """
    if v.ndim != 1 or v.numel() == 0:
        raise ValueError(f"median: expected a non-empty 1-D tensor, got shape {tuple(v.shape)}")
    s = torch.sort(v).values
    n = s.numel()
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def mad(v: torch.Tensor) -> torch.Tensor:
    """Consistent median absolute deviation: 1.4826 * median(|v - median(v)|)."""
    return MAD_CONSISTENCY * median((v - median(v)).abs())


def anomaly_index(v: torch.Tensor, side: str = "low") -> torch.Tensor:
    """Per-entry anomaly index ``(median - v) / MAD`` (``side="low"``) or ``(v - median) / MAD``.

    Neural Cleanse (Wang et al. 2019, Sec. IV-C): the index of the class with the
    smallest reversed-trigger norm; a class is an outlier when its index exceeds 2
    (on the small side only, as in the reference ``mad_outlier_detection.py``).
    A zero MAD (all values equal up to half of them) gives +inf for entries on the
    anomalous side of the median and 0 elsewhere.
    """
    if side not in ("low", "high"):
        raise ValueError(f"anomaly_index.side: got {side!r}, expected 'low' or 'high'")
    v = v.to(torch.float64)
    dev = (median(v) - v) if side == "low" else (v - median(v))
    m = mad(v)
    if float(m) == 0.0:
        return torch.where(dev > 0, torch.full_like(dev, float("inf")), torch.zeros_like(dev))
    return dev / m


def top_direction_scores(reps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral-signature scores of one class (Tran et al. 2018, Algorithm 1).

    ``reps``: (n, d) representations R(x_i). Returns ``(tau, s)``: tau (n,) =
    ``<R(x_i) - mean, v>^2`` with v the top right singular vector of the centred
    matrix, and s the singular values (descending).
    """
    if reps.ndim != 2 or reps.shape[0] < 2:
        raise ValueError(f"top_direction_scores: expected (n >= 2, d) representations, got {tuple(reps.shape)}")
    centred = reps.to(torch.float64) - reps.to(torch.float64).mean(0, keepdim=True)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[0]) ** 2, s


def auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties count 1/2."""
    if positive.numel() == 0 or negative.numel() == 0:
        return float("nan")
    p = positive.flatten().double()[:, None]
    n = negative.flatten().double()[None, :]
    return float(((p > n).double() + 0.5 * (p == n).double()).mean())

"""Activation clustering: 2-means on each class's reduced penultimate activations.

Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy, Srivastava.
"Detecting Backdoor Attacks on Deep Neural Networks by Activation
Clustering." SafeAI@AAAI 2019, arXiv:1811.03728. Reference implementation:
IBM ART ``art/defences/detector/poison/activation_defence.py`` and
``clustering_analyzer.py`` (read, not copied).

With a model trained on the (possibly poisoned) data, the samples of each
label are represented by the last hidden layer's activations, reduced to
``nb_dims`` = 10 dimensions, and split by k-means with k = 2. The paper reduces
with FastICA (``reduce="ica"``); ICA returns unit-variance components, so the
direction that separates the poisons loses its scale advantage and 2-means
often splits another component: on the small CNNs of the audit experiment ICA
finds ~40% of the poisons and PCA all of them, so PCA is the default here. Poisoned samples of the target label reach it through the
trigger, not the label's features, so they form their own small cluster. A
cluster is judged poisonous (Sec. 4, "Exclusionary reclassification" aside):

``relative_size``
    the smaller cluster holds less than ``size_threshold`` (0.35, ART's
    default) of the label's samples;
``silhouette``
    additionally the 2-means split fits well: silhouette score above
    ``silhouette_threshold`` (a clean label, one blob, gives a low score).

``removed`` are the samples of the poisonous clusters. ``flagged`` when any
label has one; ``target`` the flagged label with the smallest such cluster.
``score``: 1 - (smallest relative cluster size over the flagged labels) in
``relative_size`` mode, the largest silhouette over flagged labels in
``silhouette`` mode (0 when nothing is flagged): higher = more suspect.
Labels with fewer than ``min_samples`` samples are skipped (listed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedsec.audit.base import (
    AuditResult,
    AuditTarget,
    Detector,
    is_int,
    is_num,
    register_detector,
    removal_figures,
    seed_from,
)
from fedsec.audit.features import class_groups, penultimate


def reduce_dims(x: np.ndarray, dims: int, method: str, seed: int) -> np.ndarray:
    """(n, d) -> (n, k) by FastICA or PCA (scikit-learn), k = min(dims, rank of the centred x).

    Both start from the top-k principal directions (ReLU activations have dead
    units, and a class may span fewer than ``dims`` directions). ``ica`` whitens
    them to unit variance here and lets FastICA find the rotation (its own
    unit-variance whitening returned NaN on rank-deficient activations); ``pca``
    keeps the principal coordinates with their variances.
    """
    import warnings

    from sklearn.decomposition import FastICA

    xc = x - x.mean(0, keepdims=True)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    rank = int((s > s[0] * 1e-6).sum()) if s.size and s[0] > 0 else 0
    k = max(1, min(dims, rank))
    if method == "pca":
        return u[:, :k] * s[:k]
    white = u[:, :k] * np.sqrt(len(x))
    if k == 1:
        return white
    with warnings.catch_warnings():  # FastICA on a few hundred points rarely reaches tol; the split still holds
        warnings.simplefilter("ignore")
        return FastICA(whiten=False, max_iter=1000, tol=0.005, random_state=seed).fit_transform(white)


def two_means(x: np.ndarray, seed: int) -> np.ndarray:
    """(n,) labels in {0, 1}: k-means with k = 2 (scikit-learn, 10 restarts)."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(x)


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2 or min(np.bincount(labels)) < 2:
        return 0.0
    return float(silhouette_score(x, labels))


def split_class(feats: torch.Tensor, dims: int, method: str, seed: int) -> dict[str, Any]:
    """One label: 2-means on reduced activations. ``small`` (n,) bool marks the smaller cluster."""
    x = feats.double().numpy()
    x = x - x.mean(0, keepdims=True)
    if float(np.abs(x).max(initial=0.0)) == 0.0:  # all samples identical: nothing to split
        return {"small": torch.zeros(len(x), dtype=torch.bool), "relative_size": 0.0, "silhouette": 0.0}
    reduced = reduce_dims(x, dims, method, seed)
    labels = two_means(reduced, seed)
    counts = np.bincount(labels, minlength=2)
    minority = int(np.argmin(counts))
    return {"small": torch.from_numpy(labels == minority), "relative_size": float(counts[minority] / len(labels)),
            "silhouette": silhouette(reduced, labels)}


@register_detector("activation_clustering")
@dataclass(frozen=True, kw_only=True)
class ActivationClustering(Detector):
    """Activation clustering (Chen et al. 2019): 2-means per label on ICA-reduced activations."""

    kind = "data"

    nb_dims: int = 10
    reduce: str = "pca"
    """'pca' or 'ica' (FastICA, the paper's choice; on our models it finds about 40% of the
    poisons where PCA finds all of them, experiments/plugins/audit.md)."""
    analysis: str = "relative_size"
    """'relative_size' or 'silhouette' (see the module docstring)."""
    size_threshold: float = 0.35
    silhouette_threshold: float = 0.10
    min_samples: int = 10

    def __post_init__(self) -> None:
        self._check(is_int(self.nb_dims) and self.nb_dims >= 1, "nb_dims", self.nb_dims, "an integer >= 1")
        self._check(self.reduce in ("ica", "pca"), "reduce", self.reduce, "'ica' or 'pca'")
        self._check(self.analysis in ("relative_size", "silhouette"), "analysis", self.analysis,
                    "'relative_size' or 'silhouette'")
        self._check(is_num(self.size_threshold) and 0 < self.size_threshold <= 0.5, "size_threshold",
                    self.size_threshold, "a number in (0, 0.5]")
        self._check(is_num(self.silhouette_threshold) and -1 <= self.silhouette_threshold <= 1,
                    "silhouette_threshold", self.silhouette_threshold, "a number in [-1, 1]")
        self._check(is_int(self.min_samples) and self.min_samples >= 4, "min_samples", self.min_samples,
                    "an integer >= 4")

    def poisonous(self, rel_size: float, sil: float) -> bool:
        small = rel_size < self.size_threshold
        return small if self.analysis == "relative_size" else small and sil > self.silhouette_threshold

    def audit(self, target: AuditTarget) -> AuditResult:
        data = self._require_data(target)
        feats = penultimate(target.model, data.x)
        removed = torch.zeros(len(data.y), dtype=torch.bool)
        per_class: dict[int, dict[str, Any]] = {}
        groups, skipped = class_groups(data.y, self.min_samples)
        for c, idx in groups:
            res = split_class(feats[idx], self.nb_dims, self.reduce, seed_from(target.generator))
            bad = self.poisonous(res["relative_size"], res["silhouette"])
            if bad:
                removed[idx[res["small"]]] = True
            per_class[c] = {"n": len(idx), "relative_size": res["relative_size"], "silhouette": res["silhouette"],
                            "poisonous": bad}
        flagged = [c for c, r in per_class.items() if r["poisonous"]]
        suspect = min(flagged, key=lambda c: per_class[c]["relative_size"]) if flagged else None
        if suspect is None:
            score = 0.0
        elif self.analysis == "relative_size":
            score = 1.0 - per_class[suspect]["relative_size"]
        else:
            score = max(per_class[c]["silhouette"] for c in flagged)
        figures = {"per_class": per_class, "flagged_classes": flagged, "skipped_classes": skipped,
                   **removal_figures(removed, target.poisoned), "params": self.params()}
        return AuditResult(flagged=bool(flagged), score=score, target=suspect, figures=figures,
                           detector=self.name)


__all__ = ["ActivationClustering", "reduce_dims", "two_means", "silhouette", "split_class"]

"""Activation clustering: 2-means on each class's reduced penultimate activations.

Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy, Srivastava.
"Detecting Backdoor Attacks on Deep Neural Networks by Activation
Clustering." SafeAI@AAAI 2019, arXiv:1811.03728. Reference implementation:
IBM ART ``art/defences/detector/poison/activation_defence.py`` and
``clustering_analyzer.py`` (read, not copied).

With a model trained on the (possibly poisoned) data, the samples of each
label are represented by the last hidden layer's activations, reduced to
``nb_dims`` dimensions and split by k-means with k = 2. Poisoned samples of
the target label reach it through the trigger, not the label's features, so
they form their own small cluster.

Reduction (``reduce``). The paper reduces with FastICA to 10 components (ART's
``FastICA``, whitening on). FastICA's sources are an orthogonal rotation of the
whitened principal coordinates, and k-means and the silhouette only see
Euclidean distances, so ICA + 2-means is exactly 2-means on the *whitened*
top-``nb_dims`` principal coordinates (a unit test checks it): the ICA rotation
changes nothing, the whitening does. Whitening gives each kept direction unit
variance; with the ~70-150 samples a client holds per label, 10 whitened
directions bury the poison direction among 9 amplified noise directions and
2-means splits noise (recall 41% on held-out digits client shares,
experiments/plugins/audit.md). With 3 whitened components recall is 74% there (92%
on the exploration seeds) and the silhouette separates poisoned from clean labels
well enough for a verdict with no false positive on 21 clean shares; ``pca``
keeps the principal coordinates unwhitened (recall 77%, but clean labels' splits
score silhouettes nearly as high as poisoned ones: a clean share flagged per dataset).
Default: ``reduce="ica"``, ``nb_dims=3``; the paper's setting is
``reduce="ica"``, ``nb_dims=10``.

Verdict (ART's ``silhouette-scores`` analysis, the paper's Sec. "Analysis of
clusters"): a label is poisonous when its smaller cluster holds less than
``size_threshold`` (0.35, ART's default) of the label's samples AND the 2-means
split fits: silhouette score above ``silhouette_threshold``. A clean label is one
blob that 2-means cuts anyway, often unevenly (a small cluster below 35% in 38-59%
of clean labels here), so size alone flags every clean share; the silhouette gate
is what controls false positives. ART's 0.10 also flags every clean share of our
local models; 0.42 is fedsec's threshold for the default ``ica``/3 reduction, chosen
on exploration seeds and measured on others (audit.md). ``flagged`` when any label
is poisonous; ``target`` the poisonous label with the largest silhouette; ``score``
the largest silhouette over the labels whose smaller cluster is below
``size_threshold`` (0 when none): ``flagged`` iff ``score > silhouette_threshold``.

Filter (``analysis``, which samples ``removed`` lists): ``relative_size`` (ART's
``relative-size``) removes the smaller cluster of every label below
``size_threshold``, verdict or not (most recall, some clean samples lost);
``silhouette`` removes only the poisonous labels' small clusters. Labels with
fewer than ``min_samples`` samples are skipped (listed).
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
    """(n, d) activations of one label -> (n, k), k = min(dims, rank of the centred x).

    ``pca``: the top-k principal coordinates with their variances. ``ica``: the
    same k directions whitened to unit variance, then rotated by FastICA
    (scikit-learn, ``whiten=False``: its own whitening returned NaN on the
    rank-deficient activations of ReLU units that never fire). FastICA's
    rotation is orthogonal, so distances equal those of the whitened
    coordinates (module docstring).
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
    """Activation clustering (Chen et al. 2019): 2-means per label on reduced activations."""

    kind = "data"

    nb_dims: int = 3
    """Components kept (the paper: 10; see the module docstring for why 3 is the default)."""
    reduce: str = "ica"
    """'ica' (FastICA, the paper's) or 'pca' (principal coordinates, unwhitened)."""
    analysis: str = "relative_size"
    """Filter: 'relative_size' removes every label's small cluster below ``size_threshold``;
    'silhouette' only those of the labels the verdict calls poisonous."""
    size_threshold: float = 0.35
    """Largest relative size of a poisonous cluster (ART's default)."""
    silhouette_threshold: float = 0.42
    """Silhouette above which a small cluster is poisonous (ART: 0.10; 0.42 calibrated for ica/3)."""
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

    def audit(self, target: AuditTarget) -> AuditResult:
        data = self._require_data(target)
        feats = penultimate(target.model, data.x)
        removed = torch.zeros(len(data.y), dtype=torch.bool)
        per_class: dict[int, dict[str, Any]] = {}
        groups, skipped = class_groups(data.y, self.min_samples)
        seed = seed_from(target.generator)
        for c, idx in groups:
            res = split_class(feats[idx], self.nb_dims, self.reduce, seed)
            small, bad = cluster_verdict(res["relative_size"], res["silhouette"], self.size_threshold,
                                         self.silhouette_threshold)
            if bad or (small and self.analysis == "relative_size"):
                removed[idx[res["small"]]] = True
            per_class[c] = {"n": len(idx), "relative_size": res["relative_size"], "silhouette": res["silhouette"],
                            "small": small, "poisonous": bad}
        flagged = [c for c, r in per_class.items() if r["poisonous"]]
        suspect = max(flagged, key=lambda c: per_class[c]["silhouette"]) if flagged else None
        score = max([r["silhouette"] for r in per_class.values() if r["small"]], default=0.0)
        figures = {"per_class": per_class, "flagged_classes": flagged, "skipped_classes": skipped,
                   **removal_figures(removed, target.poisoned), "params": self.params()}
        return AuditResult(flagged=bool(flagged), score=score, target=suspect, figures=figures,
                           detector=self.name)


def cluster_verdict(rel_size: float, sil: float, size_threshold: float, silhouette_threshold: float
                    ) -> tuple[bool, bool]:
    """``(small, poisonous)`` of one label's 2-means split (ART's silhouette-scores rule).

    ``rel_size``: the smaller cluster's share of the label's samples; ``sil``: the
    split's mean silhouette. Small: ``rel_size < size_threshold``; poisonous: small
    and ``sil > silhouette_threshold``.
    """
    small = rel_size < size_threshold
    return small, small and sil > silhouette_threshold


__all__ = ["ActivationClustering", "cluster_verdict", "reduce_dims", "two_means", "silhouette", "split_class"]

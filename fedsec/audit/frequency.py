"""Frequency artifacts of triggers: a DCT-spectrum classifier of clean vs triggered images.

Zeng, Park, Mahmood, Jia. "Rethinking the Backdoor Attacks' Triggers: A
Frequency Perspective." ICCV 2021, arXiv:2104.03413. Reference code
github.com/YiZeng623/frequency-backdoor (``util.py``: per-channel orthonormal
2-D DCT-II, ``Sec4_Frequency_Detection``; read, not copied).

Triggers with sharp edges or noise (patches, noise blends) leave
high-frequency artifacts that natural images lack (Sec. 3). The defender
needs no knowledge of the attacker's trigger (Sec. 4): from clean images it
makes its own poisoned copies with random triggers (here ``patch``: squares of
random side up to ``max_patch`` of the image, random place, a random colour
or random noise; ``blend``: uniform noise blended with a random weight in
``blend_alpha``), transforms every image by the 2-D DCT of each channel, and
trains a small binary CNN (the project's ``cnn``) on the standardised
coefficients. It is then applied to data with triggers it never saw.

As a data detector: trained on ``target.clean`` (the defender's clean set),
it scores every sample of ``target.data``; ``removed`` are those with
P(triggered) > ``threshold`` (0.5, the paper's decision), or, with ``target_fpr``
> 0, above the threshold that removes that fraction of held-out clean images
(a calibration fedsec adds: trained on a few hundred images the classifier is
well ranked but not calibrated). ``score`` is the fraction removed; ``target`` is
the label whose removals most exceed their null expectation (stratified verdict;
:func:`stratum_excess`), else the most common label among the removed samples.
Verdict (``verdict``; the paper gives per-sample decisions only, the data-level
verdict is fedsec's): ``excess``
(default) flags the data when it loses more samples than the held-out clean
images do, by a one-sided exact test at level ``alpha`` (so a clean set drawn
like the defender's is flagged with probability about ``alpha``, whatever the
classifier's own false-positive rate). With ``stratify`` (default) the rates are
compared within each label, ``data.y`` against the held-out images' labels: the
exact conditional Mantel-Haenszel test of a common odds ratio of 1 (Birch 1964;
R's ``mantelhaen.test(exact=TRUE, alternative="greater")``), because the
classifier's false-positive rate differs by class, and a label-skewed share (what
FL clients hold) compared pooled is flagged for its label mix (pooled: 2/8 clean
Dirichlet shares in experiments/plugins/audit.md). A poisoned share's ``data.y``
carries the attacker's labels, so its poisons are compared with held-out images of
the target label. ``stratify=False``: one pooled Fisher exact test. ``fraction``
flags the data when the removed fraction exceeds ``flag_fraction`` (no
false-positive control: with a 5% per-sample rate about half of all clean sets
exceed 5%). The figures include the classifier's own true/false positive rates on
held-out clean images (``val_fraction`` of the clean set) with fresh self-made
triggers, the p-value and ``verdict_test`` (which test ran). The audited model is
not used.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

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
from fedsec.data import TensorData
from fedsec.training import sgd_train

FAMILIES = ("patch", "blend")


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, n) orthonormal DCT-II matrix: ``D[k, i] = a_k cos(pi (2i + 1) k / 2n)``, a_0 = sqrt(1/n), a_k = sqrt(2/n)."""
    k = torch.arange(n, dtype=dtype, device=device)[:, None]
    i = torch.arange(n, dtype=dtype, device=device)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] = d[0] / math.sqrt(2.0)
    return d


def dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two dims (``scipy.fft.dctn(x, axes=(-2, -1), norm="ortho")``)."""
    dh = dct_matrix(x.shape[-2], x.dtype, x.device)
    dw = dct_matrix(x.shape[-1], x.dtype, x.device)
    return dh @ x @ dw.T


def idct2(c: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct2` (the matrices are orthogonal: D^T undoes D)."""
    dh = dct_matrix(c.shape[-2], c.dtype, c.device)
    dw = dct_matrix(c.shape[-1], c.dtype, c.device)
    return dh.T @ c @ dw


def random_patch(x: torch.Tensor, max_patch: float, generator: torch.Generator) -> torch.Tensor:
    """A copy of ``x`` (N, C, H, W) with a random square per image (side 1..max_patch*H, colour or noise)."""
    n, c, h, w = x.shape
    side_max = max(1, int(round(max_patch * min(h, w))))
    side = torch.randint(1, side_max + 1, (n,), generator=generator)
    r0 = (torch.rand(n, generator=generator) * (h - side + 1)).long()
    c0 = (torch.rand(n, generator=generator) * (w - side + 1)).long()
    rows, cols = torch.arange(h), torch.arange(w)
    in_r = (rows[None] >= r0[:, None]) & (rows[None] < (r0 + side)[:, None])
    in_c = (cols[None] >= c0[:, None]) & (cols[None] < (c0 + side)[:, None])
    mask = (in_r[:, :, None] & in_c[:, None, :]).to(x.dtype)[:, None]
    colour = torch.rand(n, c, 1, 1, generator=generator).expand(n, c, h, w)
    noise = torch.rand(n, c, h, w, generator=generator)
    use_noise = (torch.rand(n, generator=generator) < 0.5)[:, None, None, None]
    content = torch.where(use_noise, noise, colour).to(x.dtype)
    mask, content = mask.to(x.device), content.to(x.device)
    return x * (1 - mask) + mask * content


def random_blend(x: torch.Tensor, alpha: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """A copy of ``x`` blended with uniform noise, weight drawn per image from ``alpha`` = (low, high)."""
    n = x.shape[0]
    a = (alpha[0] + (alpha[1] - alpha[0]) * torch.rand(n, 1, 1, 1, generator=generator)).to(x.dtype)
    noise = torch.rand(x.shape, generator=generator).to(x.dtype)
    a, noise = a.to(x.device), noise.to(x.device)
    return (1 - a) * x + a * noise


@dataclass(frozen=True)
class SpectrumClassifier:
    """A trained DCT-spectrum classifier: standardised coefficients -> P(triggered)."""

    model: nn.Module
    mean: torch.Tensor
    std: torch.Tensor

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return (dct2(x.double()).float() - self.mean) / self.std

    @torch.no_grad()
    def prob(self, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
        """(N,) P(triggered) for images ``x`` (N, C, H, W) in [0, 1]."""
        was = self.model.training
        self.model.eval()
        dev = next(self.model.parameters()).device
        z = self.features(x.cpu())
        out = [torch.softmax(self.model(z[i : i + batch_size].to(dev)), 1)[:, 1].cpu()
               for i in range(0, len(z), batch_size)]
        self.model.train(was)
        return torch.cat(out) if out else torch.empty(0)


@register_detector("frequency")
@dataclass(frozen=True, kw_only=True)
class FrequencyDetector(Detector):
    """Frequency detector (Zeng et al. ICCV 2021): a CNN on DCT spectra, trained with self-made triggers."""

    kind = "data"

    families: tuple[str, ...] = field(default=FAMILIES)
    """Self-made trigger families the classifier is trained with ('patch', 'blend')."""
    max_patch: float = 0.25
    blend_alpha: tuple[float, float] = (0.05, 0.3)
    copies: int = 4
    """Triggered copies made of every clean training image (each paired with a clean copy)."""
    epochs: int = 15
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    width: int = 16
    """Channels of the classifier's first conv layer (the ``cnn`` of the model zoo)."""
    val_fraction: float = 0.2
    threshold: float = 0.5
    """P(triggered) above which a sample is removed (the paper's argmax), unless ``target_fpr`` > 0."""
    target_fpr: float = 0.0
    """If > 0: the threshold is instead the (1 - target_fpr) quantile of P(triggered) on the held-out
    clean images, so about this fraction of clean samples is removed (needs ``val_fraction`` > 0)."""
    flag_fraction: float = 0.05
    """Verdict ``fraction``: flagged when more than this fraction of the data is removed."""
    verdict: str = "excess"
    """'excess' (exact test against the held-out clean images' removal rate) or 'fraction'."""
    alpha: float = 0.01
    """Verdict ``excess``: the test's level, the verdict's false-positive rate on clean data."""
    stratify: bool = True
    """Verdict ``excess``: compare removal rates within each label (exact conditional Mantel-Haenszel
    test, :func:`stratified_excess_p_value`) rather than pooled (one Fisher test,
    :func:`excess_p_value`), so a label-skewed share is not flagged for holding more of the labels
    the classifier removes more often."""

    def __post_init__(self) -> None:
        fams = tuple(self.families) if isinstance(self.families, (list, tuple)) else self.families
        self._check(isinstance(fams, tuple) and len(fams) > 0 and all(f in FAMILIES for f in fams), "families",
                    self.families, f"a non-empty list drawn from {list(FAMILIES)}")
        object.__setattr__(self, "families", fams)
        al = tuple(self.blend_alpha) if isinstance(self.blend_alpha, (list, tuple)) else None
        self._check(al is not None and len(al) == 2 and all(is_num(a) for a in al) and 0 < al[0] <= al[1] <= 1,
                    "blend_alpha", self.blend_alpha, "[low, high] with 0 < low <= high <= 1")
        object.__setattr__(self, "blend_alpha", (float(al[0]), float(al[1])))
        self._check(is_num(self.max_patch) and 0 < self.max_patch <= 1, "max_patch", self.max_patch,
                    "a number in (0, 1]")
        for f in ("copies", "epochs", "batch_size", "width"):
            v = getattr(self, f)
            self._check(is_int(v) and v >= 1, f, v, "an integer >= 1")
        self._check(is_num(self.lr) and self.lr > 0, "lr", self.lr, "a number > 0")
        self._check(is_num(self.momentum) and 0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        self._check(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", self.weight_decay,
                    "a number >= 0")
        self._check(is_num(self.val_fraction) and 0 <= self.val_fraction < 1, "val_fraction", self.val_fraction,
                    "a number in [0, 1)")
        self._check(is_num(self.threshold) and 0 < self.threshold < 1, "threshold", self.threshold,
                    "a number in (0, 1)")
        self._check(is_num(self.target_fpr) and 0 <= self.target_fpr < 1, "target_fpr", self.target_fpr,
                    "a number in [0, 1) (0 = use threshold)")
        self._check(self.target_fpr == 0 or self.val_fraction > 0, "target_fpr", self.target_fpr,
                    "0 when val_fraction is 0 (the calibration needs held-out clean images)")
        self._check(is_num(self.flag_fraction) and 0 <= self.flag_fraction < 1, "flag_fraction",
                    self.flag_fraction, "a number in [0, 1)")
        self._check(self.verdict in ("excess", "fraction"), "verdict", self.verdict, "'excess' or 'fraction'")
        self._check(self.verdict == "fraction" or self.val_fraction > 0, "verdict", self.verdict,
                    "'fraction' when val_fraction is 0 (the test needs held-out clean images)")
        self._check(is_num(self.alpha) and 0 < self.alpha < 1, "alpha", self.alpha, "a number in (0, 1)")
        self._check(isinstance(self.stratify, bool), "stratify", self.stratify, "true or false")

    def self_made(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A triggered copy of every image, each with a family drawn uniformly from ``families``."""
        which = torch.randint(len(self.families), (len(x),), generator=generator)
        out = x.clone()
        for k, fam in enumerate(self.families):
            idx = (which == k).nonzero().flatten()
            if len(idx) == 0:
                continue
            sub = x[idx]
            out[idx] = (random_patch(sub, self.max_patch, generator) if fam == "patch"
                        else random_blend(sub, self.blend_alpha, generator))
        return out

    def fit(self, clean: torch.Tensor, generator: torch.Generator,
            device: torch.device | str = "cpu") -> SpectrumClassifier:
        """Train the spectrum classifier on ``clean`` (N, C, H, W) and self-made triggered copies."""
        from fedsec.models import build_model
        from fedsec.seeding import scoped_seed

        if len(clean) < 2:
            raise ValueError(f"frequency: needs at least 2 clean images to train on, got {len(clean)}")
        xs = torch.cat([clean] * self.copies)
        x = torch.cat([xs, self.self_made(xs, generator)])
        y = torch.cat([torch.zeros(len(xs), dtype=torch.long), torch.ones(len(xs), dtype=torch.long)])
        coeff = dct2(x.double()).float()
        mean, std = coeff.mean(0), coeff.std(0).clamp_min(1e-6)
        with scoped_seed(seed_from(generator), "frequency-detector-init"):
            net = build_model("cnn", in_shape=tuple(clean.shape[1:]), num_classes=2, width=self.width)
        sgd_train(net, TensorData((coeff - mean) / std, y), epochs=self.epochs, batch_size=self.batch_size,
                  lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, generator=generator,
                  device=device)
        return SpectrumClassifier(net.eval(), mean, std)

    def audit(self, target: AuditTarget) -> AuditResult:
        data = self._require_data(target)
        g = target.generator
        clean = target.clean.x
        perm = torch.randperm(len(clean), generator=g)
        n_val = int(round(self.val_fraction * len(clean)))
        val, train = clean[perm[:n_val]], clean[perm[n_val:]]
        val_y = target.clean.y.cpu()[perm[:n_val]]
        clf = self.fit(train, g, target.device)
        figures: dict[str, Any] = {"n_train_clean": len(train), "n_val": n_val}
        threshold = self.threshold
        val_removed = torch.zeros(n_val, dtype=torch.bool)
        if n_val:
            p_clean, p_trig = clf.prob(val), clf.prob(self.self_made(val, g))
            if self.target_fpr > 0:
                threshold = float(torch.quantile(p_clean.double(), 1 - self.target_fpr))
            val_removed = p_clean > threshold
            figures["val_fpr"] = int(val_removed.sum()) / n_val
            figures["val_tpr"] = float((p_trig > threshold).float().mean())
        figures["threshold_used"] = threshold
        prob = clf.prob(data.x)
        removed = prob > threshold
        frac = float(removed.float().mean())
        if self.verdict == "excess":
            if self.stratify:
                y = data.y.cpu()
                size = int(max(int(y.max()) if len(y) else 0, int(val_y.max()) if n_val else 0)) + 1
                per_class = [torch.bincount(lab, minlength=size)
                             for lab in (y[removed], y, val_y[val_removed], val_y)]
                figures["p_value"] = stratified_excess_p_value(*per_class)
                figures["verdict_test"] = "stratified exact Mantel-Haenszel (per label)"
                excess = stratum_excess(*per_class)
                figures["excess_per_label"] = excess.tolist()
            else:
                figures["p_value"] = excess_p_value(int(removed.sum()), len(removed), int(val_removed.sum()), n_val)
                figures["verdict_test"] = "pooled Fisher exact"
            flagged = figures["p_value"] < self.alpha
        else:
            flagged = frac > self.flag_fraction
        # stratified: the label whose removals most exceed its own null (the most common removed
        # label of a skewed share is just its most common label)
        if not flagged:
            suspect = None
        elif "excess_per_label" in figures:
            suspect = int(torch.argmax(excess))
        else:
            suspect = int(torch.mode(data.y.cpu()[removed]).values)
        figures.update({"fraction_flagged": frac, **removal_figures(removed, target.poisoned),
                        "params": self.params()})
        return AuditResult(flagged=flagged, score=frac, target=suspect, figures=figures, detector=self.name)


def excess_p_value(k: int, n: int, v: int, m: int) -> float:
    """One-sided Fisher exact p-value that the audited data's removal rate (``k`` of ``n``)
    exceeds the clean held-out images' (``v`` of ``m``): small when the data loses more than
    clean data would. Conditioning on the total removed makes it exact for small sets."""
    from scipy.stats import fisher_exact

    return float(fisher_exact([[k, n - k], [v, m - v]], alternative="greater").pvalue)


def stratum_excess(k: torch.Tensor, n: torch.Tensor, v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(S,) float64: per stratum, removed audited samples minus their null expectation
    ``(k_c + v_c) n_c / (n_c + m_c)`` (the hypergeometric mean given the margins); 0 for a
    stratum with no held-out images (no evidence either way)."""
    k, n, v, m = (t.double() for t in (k, n, v, m))
    expected = torch.where(m > 0, (k + v) * n / (n + m).clamp_min(1), k)
    return k - expected


def stratified_excess_p_value(k, n, v, m) -> float:
    """One-sided exact conditional Mantel-Haenszel p-value (Birch 1964; R's
    ``mantelhaen.test(exact=TRUE, alternative="greater")``) that, within strata (classes), the
    audited data loses more samples than the held-out clean images do.

    ``k``, ``n``, ``v``, ``m``: per-stratum counts, equal-length sequences or 1-D tensors of
    non-negative integers: stratum c's table is [[k_c, n_c - k_c], [v_c, m_c - v_c]] (audited
    removed / kept, held-out removed / kept). H0: common odds ratio 1 (within every class the
    removal rate is the same on both sides, however it differs across classes); alternative:
    > 1. Conditional on every stratum's margins, k_c is hypergeometric (population n_c + m_c,
    k_c + v_c removed, n_c drawn); the statistic K = sum_c k_c has the convolution of those
    pmfs as null law; the p-value is P(K >= observed). A stratum with an empty side has one
    possible table and drops out; with one stratum this is :func:`excess_p_value`."""
    import numpy as np
    from scipy.stats import hypergeom

    cols = {}
    for name, val in (("k", k), ("n", n), ("v", v), ("m", m)):
        vals = val.tolist() if isinstance(val, torch.Tensor) else list(val)
        if not all(isinstance(a, numbers.Integral) and not isinstance(a, bool) and a >= 0 for a in vals):
            raise ValueError(f"stratified_excess_p_value: {name} must hold non-negative integers, got {vals}")
        cols[name] = [int(a) for a in vals]
    if len({len(c) for c in cols.values()}) != 1:
        raise ValueError("stratified_excess_p_value: k, n, v, m must have one entry per stratum, got lengths "
                         + str({name: len(c) for name, c in cols.items()}))
    law, offset, observed = np.ones(1), 0, 0
    for kc, nc, vc, mc in zip(cols["k"], cols["n"], cols["v"], cols["m"]):
        if kc > nc or vc > mc:
            raise ValueError(f"stratified_excess_p_value: a stratum removes more than it holds "
                             f"(k={kc} of n={nc}, v={vc} of m={mc})")
        removed = kc + vc
        lo, hi = max(0, removed - mc), min(removed, nc)
        observed += kc
        offset += lo
        if hi > lo:
            law = np.convolve(law, hypergeom.pmf(np.arange(lo, hi + 1), nc + mc, removed, nc))
    return float(min(1.0, law[observed - offset:].sum()))


__all__ = ["FrequencyDetector", "excess_p_value", "stratified_excess_p_value", "stratum_excess", "SpectrumClassifier",
           "dct_matrix", "dct2", "idct2", "random_patch", "random_blend"]

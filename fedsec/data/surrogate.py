"""Surrogate data from a single out-of-distribution image.

Many augmented patches of one natural image stand in for the training data
the server never sees: the watermark plugin (Yu, Hong et al., "Safe and Robust
Watermark Injection with a Single OoD Image", arXiv 2309.01786) injects its
watermark on them and the ABD plugin distils through them (OOD-data KD,
Asano & Saeed's single-image augmentation, as used by Hong et al. ICML 2023).
The default image is one of scikit-image's bundled samples: no download.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from fedsec.seeding import scoped_seed

SKIMAGE_SAMPLES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat")


def load_ood_image(source: str = "astronaut") -> torch.Tensor:
    """An image as a (3, H, W) float tensor in [0, 1].

    ``source`` is a scikit-image sample name (see ``SKIMAGE_SAMPLES``) or a path
    to an image file (read with torchvision.io).
    """
    if source in SKIMAGE_SAMPLES:
        return _skimage_sample(source).clone()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"OoD image {source!r}: not a scikit-image sample ({', '.join(SKIMAGE_SAMPLES)}) "
            "nor an existing image file"
        )
    from torchvision.io import ImageReadMode, decode_image

    return decode_image(str(path), mode=ImageReadMode.RGB).float().div(255.0)


@functools.lru_cache(maxsize=len(SKIMAGE_SAMPLES))
def _skimage_sample(source: str) -> torch.Tensor:
    import skimage.data

    arr = np.asarray(getattr(skimage.data, source)())
    img = torch.from_numpy(arr.copy())
    img = img.unsqueeze(0).expand(3, -1, -1) if img.ndim == 2 else img.permute(2, 0, 1)[:3]
    return img.float().div(255.0)


# Results are memoised (bit-identical to a fresh draw: same seed, same RNG
# stream) so repeated calls in one process -- the watermark plugin's
# injection / verification sets, the ABD plugin, every round of a re-embedding
# plugin, tests -- pay the per-patch augmentation cost once. Only moderately
# sized sets are kept (_CACHE_MAX_ELEMS floats each, 8 sets).
_CACHE_MAX_ELEMS = 8 * 2**20


def surrogate_patches(
    n: int,
    in_shape: tuple[int, int, int],
    *,
    source: str = "astronaut",
    seed: int = 0,
    scale: tuple[float, float] = (0.02, 0.3),
) -> torch.Tensor:
    """``n`` augmented patches of one image, shape (n, C, H, W) float32 in [0, 1].

    Augmentations: random resized crop (area fraction ``scale``), horizontal
    flip, rotation up to 15 degrees, colour jitter; resized to the model's
    input and converted to grayscale for 1-channel models. Deterministic in
    ``seed`` (torchvision v2 draws from the global RNG, so it runs under a
    scoped seed that restores the caller's state).
    """
    c, h, w = (int(v) for v in in_shape)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if c not in (1, 3):
        raise ValueError(f"in_shape channels must be 1 or 3, got {c}")
    key = (int(n), (c, h, w), str(source), int(seed), (float(scale[0]), float(scale[1])))
    if n * c * h * w <= _CACHE_MAX_ELEMS and (source in SKIMAGE_SAMPLES):
        return _cached_patches(*key).clone()
    return _draw_patches(*key)


@functools.lru_cache(maxsize=8)
def _cached_patches(n, in_shape, source, seed, scale) -> torch.Tensor:
    return _draw_patches(n, in_shape, source, seed, scale)


def _draw_patches(
    n: int, in_shape: tuple[int, int, int], source: str, seed: int, scale: tuple[float, float]
) -> torch.Tensor:
    from torchvision.transforms import v2

    c, h, w = in_shape
    img = load_ood_image(source)
    aug = v2.Compose(
        [
            v2.RandomResizedCrop((h, w), scale=scale, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomRotation(15),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.1),
        ]
    )
    with scoped_seed(seed, "surrogate", source):
        out = torch.stack([aug(img) for _ in range(n)])
    if c == 1:
        out = v2.functional.rgb_to_grayscale(out)
    elif c != 3:
        raise ValueError(f"in_shape channels must be 1 or 3, got {c}")
    return out.clamp_(0, 1).contiguous()

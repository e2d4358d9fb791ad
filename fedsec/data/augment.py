"""Training augmentation and input normalisation, per dataset.

Augmentation (``data.augment``) rewrites each *training* batch on the training
device: ``crop_flip`` is the CIFAR recipe of the backdoor and robust-FL papers
(zero-pad 4 pixels, random 32x32 crop, horizontal flip with p = 1/2:
torchvision's ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``);
``crop`` omits the flip, which is the right default for GTSRB, where a mirrored
"turn left" sign is a "turn right" sign (a different class). ``auto`` picks
per dataset (:data:`DEFAULT_AUGMENT`): crop_flip for CIFAR-10/100, crop for
GTSRB, none for everything else, so the digits and digits_scenes results
recorded so far do not change.

The draws come from their own generator, seeded by (seed, "augment", round,
partition id) on the training device, not from the client's generator: with
augmentation on or off the batch order and every attack's draws stay the same,
so an A/B comparison isolates the augmentation.

Normalisation (``data.normalize``) subtracts a per-channel mean and divides by
a standard deviation at the model's input, for training and evaluation alike
(a forward pre-hook on the model, no parameters, so checkpoints keep their
keys). Triggers and attacks keep working in [0, 1] pixel space. ``auto``:
the dataset's statistics where :data:`NORMALIZATION` has them (CIFAR-10/100,
GTSRB), else none.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from fedsec.registry import Registry

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
AUGMENTATIONS: Registry = Registry("augmentation")
register_augmentation = AUGMENTATIONS.register

DEFAULT_AUGMENT = {"cifar10": "crop_flip", "cifar100": "crop_flip", "gtsrb": "crop"}
# Per-channel mean and standard deviation of the training images in [0, 1].
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "gtsrb": ((0.3403, 0.3121, 0.3214), (0.2724, 0.2608, 0.2669)),
}
NORMALIZE_MODES = ("auto", "none", "dataset")


def crop_shift(x: torch.Tensor, generator: torch.Generator, *, padding: int = 4,
               flip: bool = False) -> torch.Tensor:
    """Random crops of the zero-padded batch, optionally mirrored, in one gather.

    x: (B, C, H, W) float images; each image i is padded by ``padding`` pixels of
    zeros, cropped back to H x W at an offset (r_i, c_i) drawn uniformly from
    {0..2p}^2, then mirrored left-right when ``flip`` and a fair coin says so. The
    draws, in order: offsets (B, 2), then coins (B,), from ``generator``, which must
    live on x's device. Returns a new tensor; x is not modified.
    """
    b, _, h, w = x.shape
    dev = x.device
    off = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator, device=dev)
    cols = torch.arange(w, device=dev).expand(b, w)
    if flip:
        mirror = torch.rand(b, generator=generator, device=dev) < 0.5
        cols = torch.where(mirror[:, None], (w - 1) - cols, cols)
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    rows = off[:, :1] + torch.arange(h, device=dev)  # (B, H) rows of the padded image
    cols = off[:, 1:] + cols  # (B, W)
    out = padded[torch.arange(b, device=dev)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()  # advanced indices first: (B, H, W, C) -> (B, C, H, W)


@register_augmentation("none")
def no_augmentation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return x


@register_augmentation("crop_flip")
def crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """CIFAR: 4-pixel zero padding, random crop, horizontal flip with p = 1/2."""
    return crop_shift(x, generator, padding=4, flip=True)


@register_augmentation("crop")
def crop(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """GTSRB: 4-pixel zero padding and a random crop; no flip (mirrored signs change class)."""
    return crop_shift(x, generator, padding=4, flip=False)


def augmentation_name(dataset: str, augment: str) -> str:
    """``augment`` with ``auto`` resolved for ``dataset``."""
    return DEFAULT_AUGMENT.get(dataset, "none") if augment == "auto" else augment


def normalization(dataset: str, mode: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(mean, std) per channel, or None, for ``data.normalize = mode`` on ``dataset``."""
    if mode == "none" or (mode == "auto" and dataset not in NORMALIZATION):
        return None
    if dataset not in NORMALIZATION:
        raise ValueError(f"no normalisation statistics for dataset {dataset!r} (known: {sorted(NORMALIZATION)}); "
                         "use data.normalize = \"auto\" or \"none\"")
    return NORMALIZATION[dataset]


class Normalize:
    """Forward pre-hook: the model sees ``(x - mean) / std`` per channel (x in [0, 1])."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        x = args[0]
        return ((x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype), *args[1:])


def attach_normalization(model: nn.Module, dataset: str, mode: str) -> nn.Module:
    """``model`` with its input normalised per ``normalization(dataset, mode)`` (in place)."""
    stats = normalization(dataset, mode)
    if stats is not None:
        model.register_forward_pre_hook(Normalize(*stats))
    return model


@contextlib.contextmanager
def augmenting(model: nn.Module, augment: Augmentation | None, generator: torch.Generator) -> Iterator[None]:
    """While the block runs, every forward pass of ``model`` in training mode sees its input
    batch augmented (evaluation-mode passes, e.g. on the test split, are left alone)."""
    if augment is None:
        yield
        return

    def hook(module: nn.Module, args: tuple) -> tuple | None:
        if not module.training:
            return None
        return (augment(args[0], generator), *args[1:])

    # prepend: augmentation acts on pixels, before a normalisation hook sees them
    handle = model.register_forward_pre_hook(hook, prepend=True)
    try:
        yield
    finally:
        handle.remove()

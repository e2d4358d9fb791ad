"""Embedded default (scikit-learn digits), its 32x32 RGB composite, and torchvision datasets from a local root."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedsec.registry import Registry

DATASETS: Registry = Registry("dataset")
register_dataset = DATASETS.register


@dataclass(frozen=True)
class TensorData:
    """An in-memory labelled image set: ``x`` (N, C, H, W) float32 in [0, 1], ``y`` (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.ndim != 4 or self.y.ndim != 1 or len(self.x) != len(self.y):
            raise ValueError(
                f"TensorData expects x (N, C, H, W) and y (N,), got {tuple(self.x.shape)} "
                f"and {tuple(self.y.shape)}"
            )

    def __len__(self) -> int:
        return len(self.y)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor | np.ndarray) -> TensorData:
        index = torch.as_tensor(index, dtype=torch.long)
        return TensorData(self.x[index], self.y[index])


@dataclass(frozen=True)
class DatasetSplits:
    """A dataset's two splits; each is in memory (``TensorData``) or read on demand from a
    torch Dataset (``fedsec.data.lazy.DatasetData``)."""

    name: str
    train: TensorData
    test: TensorData
    num_classes: int

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.in_shape)  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, root: str = "data", download: bool = False) -> DatasetSplits:
    """Load ``name`` once per process (cached on its arguments)."""
    return DATASETS.get(name)(root=Path(root).expanduser(), download=download)


@register_dataset("digits")
def digits(root: Path, download: bool) -> DatasetSplits:
    """scikit-learn's bundled 8x8 digits (1,797 images): no file, no network.

    Fixed stratified 80/20 split (random_state=0) so every run and every
    process sees the same test set whatever the scenario's seed.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]  # 0..16 ink -> [0, 1]
    y = bunch.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    return DatasetSplits(
        "digits",
        TensorData(torch.from_numpy(xtr), torch.from_numpy(ytr)),
        TensorData(torch.from_numpy(xte), torch.from_numpy(yte)),
        10,
    )


# Backgrounds for digits_scenes: scikit-image's bundled colour photos, never the
# astronaut (the default out-of-distribution source of the watermark and ABD plugins).
SCENE_SOURCES = ("coffee", "chelsea", "rocket")


@register_dataset("digits_scenes")
def digits_scenes(root: Path, download: bool) -> DatasetSplits:
    """The digits upscaled to 20x20 and pasted on 32x32 RGB crops of photos (offline).

    A CIFAR-sized input in which an object covers a fraction of the image, so a
    3x3 trigger is a small part of the input, as in the CIFAR-10 settings of the
    backdoor papers. Each image: a random 128x128 crop (offsets on the 4-pixel
    grid) of one of :data:`SCENE_SOURCES` (scikit-image, bundled), area-downsampled
    to 32x32 and dimmed by half; the digit (bilinear, 8x8 -> 20x20) is written as
    the pixelwise maximum at a random offset. Same split as ``digits``; the draws
    are fixed (their own seed), so every process builds the same images.
    """
    import skimage.data

    from fedsec.seeding import generator

    base = digits(root, download)
    # Area-downsampling a 128x128 crop whose offset is a multiple of 4 is a 32x32
    # window of the photo downsampled by 4 once, so crops become index arithmetic.
    small = []
    for name in SCENE_SOURCES:
        ph = torch.from_numpy(np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0).permute(2, 0, 1)
        h, w = (ph.shape[1] // 4) * 4, (ph.shape[2] // 4) * 4
        small.append(torch.nn.functional.avg_pool2d(ph[None, :, :h, :w], 4)[0])
    ar20, ar32 = torch.arange(20), torch.arange(32)

    def compose(x: torch.Tensor, split: str) -> torch.Tensor:
        g = generator(0, "digits_scenes", split)
        n = len(x)
        which = torch.randint(len(small), (n,), generator=g)
        u = torch.rand(n, 2, generator=g)
        out = torch.empty(n, 3, 32, 32)
        for k, ph in enumerate(small):  # one gather per photo, not per image
            idx = (which == k).nonzero().flatten()
            r = (u[idx, 0] * (ph.shape[1] - 31)).long()
            c = (u[idx, 1] * (ph.shape[2] - 31)).long()
            rows, cols = r[:, None] + ar32, c[:, None] + ar32
            out[idx] = ph[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)
        out *= 0.5
        ink = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
        canvas = torch.zeros(n, 1, 32, 32)
        off = torch.randint(0, 13, (n, 2), generator=g)
        rows, cols = off[:, :1] + ar20, off[:, 1:] + ar20
        canvas[torch.arange(n)[:, None, None], 0, rows[:, :, None], cols[:, None, :]] = ink[:, 0]
        return torch.maximum(out, canvas)

    return DatasetSplits(
        "digits_scenes",
        TensorData(compose(base.train.x, "train"), base.train.y.clone()),
        TensorData(compose(base.test.x, "test"), base.test.y.clone()),
        10,
    )


class DatasetMissing(FileNotFoundError):
    """A dataset's files are not under ``data.root`` and ``data.download`` is off (or failed)."""


def _torchvision_split(cls, root: Path, download: bool, name: str, **ctor) -> TensorData:
    from torchvision.transforms import v2

    try:
        ds = cls(str(root), download=download, **ctor)
    except RuntimeError as e:  # torchvision: "Dataset not found. You can use download=True ..."
        fix = ("put the files there or point data.root at the folder that holds them" if download else
               "put the files there, point data.root at the folder that holds them, or set "
               "data.download = true on a machine with network access")
        raise DatasetMissing(
            f"data.dataset = {name!r}: torchvision's {cls.__name__} not found under data.root={str(root)!r} "
            f"({root.resolve()}, data.download = {str(download).lower()}; torchvision says: "
            f"{' '.join(str(e).split())}); {fix}"
        ) from None
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    if hasattr(ds, "data") and hasattr(ds, "targets"):
        data = ds.data if isinstance(ds.data, torch.Tensor) else torch.from_numpy(np.asarray(ds.data))
        x = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
        x = to_tensor(x.contiguous())
        y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
        return TensorData(x, y)
    # Datasets without an array attribute (GTSRB) go through the real loader item by item.
    resize = v2.Resize((32, 32), antialias=True)
    xs, ys = zip(*[(resize(to_tensor(img)), int(t)) for img, t in ds])
    return TensorData(torch.stack(xs), torch.tensor(ys))


def _register_torchvision(name: str, attr: str, num_classes: int, train: dict, test: dict) -> None:
    @register_dataset(name)
    def _load(root: Path, download: bool) -> DatasetSplits:
        import torchvision.datasets as tvd

        cls = getattr(tvd, attr)
        tr = _torchvision_split(cls, root, download, name, **train)
        te = _torchvision_split(cls, root, download, name, **test)
        return DatasetSplits(name, tr, te, num_classes)

    _load.__doc__ = f"torchvision {attr} from data.root (downloaded there only if data.download)."


_TRAIN, _TEST = {"train": True}, {"train": False}
_register_torchvision("mnist", "MNIST", 10, _TRAIN, _TEST)
_register_torchvision("fashion_mnist", "FashionMNIST", 10, _TRAIN, _TEST)
_register_torchvision("cifar10", "CIFAR10", 10, _TRAIN, _TEST)
_register_torchvision("cifar100", "CIFAR100", 100, _TRAIN, _TEST)
_register_torchvision("gtsrb", "GTSRB", 43, {"split": "train"}, {"split": "test"})
_register_torchvision(
    "emnist", "EMNIST", 47, {"split": "balanced", "train": True}, {"split": "balanced", "train": False}
)

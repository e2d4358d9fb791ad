"""``scenes_cifar``: digits_scenes tiled to CIFAR-10's size (50,000 32x32 RGB training images),
quantised to 8 bits as CIFAR is, for memory measurements (experiments/benchmarks/shared_memory.py).

Import it (``run.imports = ["scenes_cifar"]`` with this folder on PYTHONPATH) to register the
dataset; ``SCENES_CIFAR_N`` sets the number of training images.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fedsec.data import DATASETS, DatasetSplits, TensorData, register_dataset


def _to_8bit(x: torch.Tensor) -> torch.Tensor:
    # As torchvision's ToDtype(float32, scale=True) turns CIFAR's uint8 pixels into floats.
    return (x * 255).round().to(torch.uint8).to(torch.float32).mul_(1.0 / 255)


def scenes_cifar(root: Path, download: bool) -> DatasetSplits:
    from fedsec.data.datasets import digits_scenes

    n = int(os.environ.get("SCENES_CIFAR_N", "50000"))
    base = digits_scenes(root, download)
    idx = torch.arange(n) % len(base.train)
    return DatasetSplits("scenes_cifar", TensorData(_to_8bit(base.train.x[idx]), base.train.y[idx].clone()),
                         TensorData(_to_8bit(base.test.x), base.test.y.clone()), 10)


if "scenes_cifar" not in DATASETS:
    register_dataset("scenes_cifar")(scenes_cifar)

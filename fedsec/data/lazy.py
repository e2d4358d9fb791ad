"""A torch ``Dataset`` as a fedsec image set: images read on demand, for data that does not fit in memory.

fedsec's built-in datasets are held in memory (``TensorData``). A lab's own
data, or a set too large for every process to hold, is any map-style
``torch.utils.data.Dataset`` (``ds[i] -> (image, label)``: an ``ImageFolder``
over files on disk, a ``DatasetFolder``, a database reader) wrapped in
:class:`DatasetData` and returned by a registered dataset loader::

    from torchvision.datasets import ImageFolder
    from fedsec.data import DatasetData, DatasetSplits, register_dataset

    @register_dataset("my_scans")
    def my_scans(root, download):
        train = DatasetData.from_dataset(ImageFolder(root / "train"), workers=4)
        test = DatasetData.from_dataset(ImageFolder(root / "test"))
        return DatasetSplits("my_scans", train, test, num_classes=len(train.dataset.classes))

(with ``run.imports = ["mypkg.data"]``, so every process registers it).

What is held, and when images are read:

- Labels only, up front: partitioning needs the labels of the whole training
  set and nothing else. They come from the dataset's ``targets`` attribute
  where it has one (torchvision's folders and arrays), else from one pass
  over the items.
- A client call reads its own partition's rows (``subset``), through a real
  ``torch.utils.data.DataLoader`` (``workers`` decoding processes), converts
  each image as torchvision's loaders do (``ToImage`` then
  ``ToDtype(float32, scale=True)``: uint8 pixels to [0, 1]) and trains from
  that. No process ever holds the whole training set, so a node's memory goes
  with the largest partition, not the dataset. The Ray engine's shared copy
  (``run.share_data``) is skipped for such a set: there is nothing to share.
- The test split is read once by the server (central evaluation, the root
  set, plugins) and must fit in the server's memory; use a test subset for
  sets where it does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from fedsec.data.datasets import TensorData


class _AsFloat(Dataset):
    """``dataset``'s items as (float32 (C, H, W) image in [0, 1], int64 label), converted per item
    in the loader's workers (module level so that worker processes can unpickle it)."""

    def __init__(self, dataset: Dataset) -> None:
        from torchvision.transforms import v2

        self.dataset = dataset
        self.convert = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.dataset[i]
        x = image if isinstance(image, torch.Tensor) and image.is_floating_point() else self.convert(image)
        return torch.as_tensor(x, dtype=torch.float32), int(label)


@dataclass(frozen=True, eq=False)
class DatasetData:
    """A labelled image set read on demand from a map-style torch ``Dataset``.

    ``dataset[i]`` returns ``(image, label)``: a PIL image, a uint8 or float
    tensor (C, H, W) or an ndarray (H, W, C), all of one shape. ``y`` (N,) int64
    are its labels, ``in_shape`` (C, H, W) its image shape. ``subset(index)``
    returns those rows as an in-memory ``TensorData`` (float32 in [0, 1]).
    """

    dataset: Any
    y: torch.Tensor
    in_shape: tuple[int, int, int]
    workers: int = 0
    """DataLoader worker processes that decode a partition's images (0: in the calling process)."""
    batch_size: int = 256

    @classmethod
    def from_dataset(cls, dataset: Any, *, labels: Any = None, workers: int = 0,
                     batch_size: int = 256) -> DatasetData:
        """Wrap ``dataset``; labels from ``labels``, else ``dataset.targets``, else one pass over it."""
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise TypeError(f"dataset: got {type(dataset).__name__}, expected a map-style torch Dataset "
                            "(with __getitem__ and __len__)")
        if not (isinstance(workers, int) and workers >= 0):
            raise ValueError(f"workers: got {workers!r}, expected an integer >= 0")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size: got {batch_size!r}, expected an integer >= 1")
        n = len(dataset)
        if n == 0:
            raise ValueError("dataset: got an empty dataset, expected at least one item")
        if labels is None:
            labels = getattr(dataset, "targets", None)
        if labels is None:  # no label column: read them (once, here; images are dropped as they come)
            labels = [int(dataset[i][1]) for i in range(n)]
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
        if len(y) != n:
            raise ValueError(f"labels: got {len(y)} labels for a dataset of {n} items")
        first = _AsFloat(dataset)[0][0]
        if first.ndim != 3:
            raise ValueError(f"dataset[0]: got an image of shape {tuple(first.shape)}, expected (C, H, W)")
        return cls(dataset, y, tuple(int(d) for d in first.shape), workers, batch_size)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.y)

    @property
    def x(self) -> torch.Tensor:
        raise AttributeError(
            f"DatasetData holds no images in memory (a dataset of {len(self)} items read on demand): "
            "take the rows you need with .subset(index)")

    def subset(self, index: torch.Tensor | np.ndarray) -> TensorData:
        """Rows ``index`` (any order, repeats allowed) read from the dataset: TensorData
        (len(index), *in_shape) float32, labels checked against ``y``."""
        idx = torch.as_tensor(np.asarray(index), dtype=torch.long).reshape(-1)
        n = len(self)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"index: rows must lie in [0, {n}), got min {int(idx.min())}, max {int(idx.max())}")
        if len(idx) == 0:
            return TensorData(torch.empty(0, *self.in_shape), torch.empty(0, dtype=torch.long))
        loader = DataLoader(Subset(_AsFloat(self.dataset), idx.tolist()), batch_size=self.batch_size,
                            shuffle=False, num_workers=self.workers)
        xs, ys = [], []
        for x, y in loader:
            if tuple(x.shape[1:]) != self.in_shape:
                raise ValueError(f"dataset: got an image of shape {tuple(x.shape[1:])}, expected "
                                 f"{self.in_shape} as dataset[0] (every image must have one shape)")
            xs.append(x)
            ys.append(y)
        y = torch.cat(ys).long()
        if not torch.equal(y, self.y[idx]):
            bad = int((y != self.y[idx]).nonzero()[0, 0])
            raise ValueError(f"dataset[{int(idx[bad])}]: label {int(y[bad])} differs from the label "
                             f"{int(self.y[idx[bad]])} given for it up front")
        return TensorData(torch.cat(xs), y)

    def materialize(self) -> TensorData:
        """The whole set in memory (the server's test split)."""
        return self.subset(torch.arange(len(self)))


def in_memory(data: TensorData | DatasetData) -> TensorData:
    """``data`` as TensorData, reading it whole if it is read on demand."""
    return data if isinstance(data, TensorData) else data.materialize()

"""Natural-id columns: who wrote / took / recorded each training example.

A natural partition gives each client the examples of one writer (FEMNIST),
user (Shakespeare, Sent140) or physical object, the non-IID split that
federated data has in the wild. A dataset can expose such columns: a function
registered here returns, for its *training* split, name -> (N_train,) array of
ids aligned with ``load_dataset(...).train``; ``data.partitioner =
"flwr:NaturalIdPartitioner"`` with ``data.partitioner_params = {partition_by = "writer"}``
gives one client per id (data.num_clients must equal the number of ids; partition i =
the i-th id in sorted order), ``flwr:GroupedNaturalIdPartitioner`` groups ids.

Of the datasets fedsec ships, none has a writer or user field: scikit-learn's
digits, MNIST, Fashion-MNIST, EMNIST (torchvision's copy drops the NIST writer
ids that LEAF's FEMNIST keeps), CIFAR-10/100 carry labels only. GTSRB has a
natural grouping of another kind: its training images come in *tracks* of about
30 frames of one physical sign, so ``track`` (class * 100000 + track number, from
the file names) groups the frames of one sign, which is what a camera-per-client
split would share.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fedsec.registry import Registry

NATURAL_IDS: Registry = Registry("natural-id source")


def register_natural_ids(dataset: str) -> Callable:
    """Decorator: ``fn(root: Path, download: bool) -> {column: (N_train,) ids}`` for ``dataset``."""
    return NATURAL_IDS.register(dataset)


@functools.lru_cache(maxsize=8)
def _cached(dataset: str, root: str, download: bool) -> tuple[tuple[str, np.ndarray], ...]:
    cols = NATURAL_IDS.get(dataset)(Path(root).expanduser(), download)
    return tuple(sorted((k, np.asarray(v)) for k, v in cols.items()))


def natural_ids(dataset: str, root: str = "data", download: bool = False) -> dict[str, np.ndarray]:
    """The natural-id columns of ``dataset``'s training split ({} when it has none)."""
    if dataset not in NATURAL_IDS:
        return {}
    return dict(_cached(dataset, str(root), bool(download)))


def track_of(path: str | Path, label: int) -> int:
    """GTSRB track id of a training image ``<class>/<track>_<frame>.ppm``, unique across classes."""
    return int(label) * 100000 + int(Path(path).name.split("_")[0])


@register_natural_ids("gtsrb")
def gtsrb_tracks(root: Path, download: bool) -> dict[str, np.ndarray]:
    """``track`` of each GTSRB training image, in the order torchvision's loader reads them
    (the same ``make_dataset`` walk over ``gtsrb/GTSRB/Training``)."""
    from torchvision.datasets.folder import make_dataset

    folder = Path(root) / "gtsrb" / "GTSRB" / "Training"
    if not folder.is_dir():
        from fedsec.data.datasets import DatasetMissing

        raise DatasetMissing(f"data.dataset = 'gtsrb': {str(folder)!r} not found (natural ids are read from "
                             "the file names of the training images)")
    samples = make_dataset(str(folder), extensions=(".ppm",))
    return {"track": np.array([track_of(p, t) for p, t in samples], dtype=np.int64)}

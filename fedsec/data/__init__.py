"""Datasets, partitioners and triggers.

Datasets are held in memory as float32 tensors in [0, 1] of shape (N, C, H, W)
with int64 labels; each process loads a dataset once (``load_dataset`` is
cached) and clients index into it, so no client call re-reads files. A set
that does not fit in memory is a torch ``Dataset`` wrapped in ``DatasetData``
(``fedsec.data.lazy``): each client call reads only its own partition.
"""

from fedsec.data.datasets import (
    DATASETS,
    DatasetSplits,
    TensorData,
    load_dataset,
    register_dataset,
)
from fedsec.data.lazy import DatasetData, in_memory
from fedsec.data.partition import PARTITIONERS, partition, register_partitioner

__all__ = [
    "DATASETS",
    "DatasetSplits",
    "TensorData",
    "DatasetData",
    "in_memory",
    "load_dataset",
    "register_dataset",
    "PARTITIONERS",
    "partition",
    "register_partitioner",
]

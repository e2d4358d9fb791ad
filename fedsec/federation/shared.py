"""Training data shared through Ray's object store: one copy per machine, read zero-copy.

Without it every Ray actor loads its own float32 copy of the whole training set
(CIFAR-10: 50,000 x 3 x 32 x 32 x 4 B = 614 MB per actor). The ``ray`` engine's
driver instead puts the training set once, packed (uint8 codes where the
source is 8-bit: fedsec.data.storage), with the partition index arrays, into
Ray's object store; each actor maps it (numpy arrays in the object store are
read zero-copy from the machine's shared memory) and converts only the rows of
the partition a client call trains on, when the call starts. The rows are
bitwise the loader's floats, so results do not change.

A key of the values the split depends on (dataset, root, partitioner and its
parameters, number of clients, seed) names each shared set; an actor keeps the
few most recent ones.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsec.data import TensorData
from fedsec.data.storage import Packed

_ATTACHED: OrderedDict[str, SharedTrain] = OrderedDict()
KEEP = 2


@dataclass(frozen=True)
class SharedTrain:
    """A training set and its split, as stored once per machine."""

    dataset: str
    train: Packed
    parts: tuple[np.ndarray, ...]
    in_shape: tuple[int, ...]
    num_classes: int


def key_of(s) -> str:
    from fedsec.seeding import derive_seed

    d = s.data
    return json.dumps([d.dataset, d.root, d.download, d.partitioner, d.partition_kwargs(), d.num_clients,
                       derive_seed(s.run.seed, "partition") % 2**32], sort_keys=True, default=str)


def shareable(s) -> bool:
    """Whether the scenario's training set is held in memory; one read on demand from a torch
    Dataset (fedsec.data.lazy) is not copied: each actor reads its clients' rows itself."""
    from fedsec.federation.env import dataset_of

    return isinstance(dataset_of(s).train, TensorData)


def build(s) -> SharedTrain:
    """The scenario's training set packed, with its partitions (on the driver)."""
    from fedsec.data.storage import pack
    from fedsec.federation.env import dataset_of, partitions_of

    ds = dataset_of(s)
    parts = tuple(np.ascontiguousarray(p, dtype=np.int64) for p in partitions_of(s))
    return SharedTrain(s.data.dataset, pack(ds.train), parts, tuple(ds.in_shape), ds.num_classes)


_PUBLISHED: OrderedDict[str, Any] = OrderedDict()


def publish(s) -> tuple[str, Any]:
    """(key, object ref) of the scenario's shared training set, put into Ray's object
    store once per driver and key (Ray must be initialised)."""
    import ray

    key = key_of(s)
    # Refs die with the Ray session that made them (ray.shutdown then ray.init in one process).
    slot = f"{ray.get_runtime_context().get_job_id()}:{key}"
    if slot not in _PUBLISHED:
        _PUBLISHED[slot] = ray.put(build(s))
        while len(_PUBLISHED) > KEEP:
            _PUBLISHED.popitem(last=False)
    _PUBLISHED.move_to_end(slot)
    return key, _PUBLISHED[slot]


def attach(key: str, shared: SharedTrain) -> None:
    """Make ``shared`` this process's source of partition rows for scenarios with ``key``."""
    from fedsec.federation.env import register_dataset_info

    _ATTACHED[key] = shared
    _ATTACHED.move_to_end(key)
    while len(_ATTACHED) > KEEP:
        _ATTACHED.popitem(last=False)
    register_dataset_info(shared.dataset, shared.in_shape, shared.num_classes)


def detach_all() -> None:
    _ATTACHED.clear()


def partition(s, pid: int) -> TensorData | None:
    """Partition ``pid``'s rows as float32, or None when no shared copy is attached here."""
    if not _ATTACHED:
        return None
    got = _ATTACHED.get(key_of(s))
    if got is None:
        return None
    return got.train.rows(got.parts[pid])


def attached_keys() -> list[str]:
    return list(_ATTACHED)


def describe(shared: SharedTrain) -> dict[str, Any]:
    return {"dataset": shared.dataset, "bytes": shared.train.nbytes, "dtype": str(shared.train.codes.dtype),
            "rows": len(shared.train)}

"""Deployment: SuperNodes as separate processes (machines), each with its own data.

A SuperNode learns what it holds from its node config
(``flower-supernode --node-config "..."``):

- ``partition-id=i num-partitions=N``: partition ``i`` of the scenario's dataset,
  split on the node exactly as in simulation (the node reads the named dataset
  from ``data.root`` and keeps rows ``i``); ``N`` must equal ``data.num_clients``.
- ``partition-id=i data-path="/data/node-i.safetensors"``: the node's own file
  and nothing else: it never reads the named dataset (its input shape and class
  count come from the file). ``python -m fedsec.federation.deployment export
  SCENARIO DIR`` writes one such file per partition, the split a simulation of
  the same scenario uses, so a deployment can be compared with it.

The partition id still names the node's role (the scenario's ``[[attack]]``
partitions) and seeds its randomness, as in simulation.

Node data file (safetensors, no pickle): ``x`` (N, C, H, W) uint8 codes or
float32 images in [0, 1], ``y`` (N,) int64 labels; metadata ``dataset``,
``num_classes``, ``scale`` (x = codes / scale; 0 = float32), ``partition_id``, ``strides``
(the source's memory layout of one image, kept so results are bitwise those of simulation).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsec.data import TensorData
from fedsec.data.storage import Packed, pack

DATA_PATH = "data-path"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
FORMAT = "fedsec-node-data-1"


class NodeDataError(ValueError):
    """A node's data file is missing, malformed or does not fit the scenario."""


def write_node_data(path: str | Path, data: TensorData, *, dataset: str, num_classes: int,
                    partition_id: int) -> Path:
    """Write one node's data file (uint8 codes when exact: see fedsec.data.storage)."""
    from fedsec.results import write_safetensors

    p = pack(data)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors(path, {"x": torch.from_numpy(np.ascontiguousarray(p.codes)), "y": torch.from_numpy(p.y)},
                      metadata={"format": FORMAT, "dataset": dataset, "num_classes": str(int(num_classes)),
                                "scale": str(p.scale), "partition_id": str(int(partition_id)),
                                "strides": ",".join(map(str, p.strides))})
    return path


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int, size: int) -> tuple[Packed, dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
            names = set(f.keys())
            if names != {"x", "y"}:
                raise NodeDataError(f"{DATA_PATH} {path!r}: expected tensors 'x' and 'y', found {sorted(names)}")
            x, y = f.get_tensor("x"), f.get_tensor("y")
    except NodeDataError:
        raise
    except Exception as e:  # safetensors' own errors: not a safetensors file, truncated, ...
        raise NodeDataError(f"{DATA_PATH} {path!r}: not a readable node data file ({e})") from None
    if meta.get("format") != FORMAT:
        raise NodeDataError(f"{DATA_PATH} {path!r}: metadata format {meta.get('format')!r}, expected {FORMAT!r} "
                            "(write it with fedsec.federation.deployment.write_node_data or `... export`)")
    scale = int(meta.get("scale", "0"))
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise NodeDataError(f"{DATA_PATH} {path!r}: expected x (N, C, H, W) and y (N,) with N >= 1, got "
                            f"{tuple(x.shape)} and {tuple(y.shape)}")
    if (scale == 0) != (x.dtype == torch.float32) or x.dtype not in (torch.float32, torch.uint8):
        raise NodeDataError(f"{DATA_PATH} {path!r}: x is {x.dtype} with scale {scale}; expected uint8 codes "
                            "with a scale > 0, or float32 with scale 0")
    if y.dtype != torch.int64:
        raise NodeDataError(f"{DATA_PATH} {path!r}: y is {y.dtype}, expected int64 labels")
    strides = tuple(int(v) for v in meta.get("strides", "").split(",") if v)
    if strides and len(strides) != 3:
        raise NodeDataError(f"{DATA_PATH} {path!r}: metadata strides {meta['strides']!r}, expected three integers")
    return Packed(x.numpy(), scale, y.numpy(), strides), meta


def read_node_data(path: str | Path) -> tuple[Packed, dict[str, str]]:
    """(packed data, metadata) of a node data file, cached while the file is unchanged."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
    except OSError as e:
        raise NodeDataError(f"{DATA_PATH} {str(p)!r}: {e.strerror or e}") from None
    return _read(str(p), st.st_mtime_ns, st.st_size)


def node_data(scenario, node_config: Mapping[str, Any]) -> TensorData | None:
    """The training data of a node started with ``data-path``; None for a ``partition-id``
    node (which takes its rows of the named dataset).

    Checks that the file belongs to this scenario (dataset name, partition id, label
    range) and tells this process the dataset's input shape and class count, so the
    model is built without reading the named dataset.
    """
    from fedsec.federation.env import _INFO, register_dataset_info

    if DATA_PATH not in node_config:
        return None
    path = str(node_config[DATA_PATH])
    packed, meta = read_node_data(path)
    want = scenario.data.dataset
    if meta.get("dataset") != want:
        raise NodeDataError(f"{DATA_PATH} {path!r} holds dataset {meta.get('dataset')!r}, but the scenario's "
                            f"data.dataset is {want!r}")
    pid = node_config.get(PARTITION_ID)
    if pid is not None and "partition_id" in meta and int(meta["partition_id"]) != int(pid):
        raise NodeDataError(f"{DATA_PATH} {path!r} was written for partition {meta['partition_id']}, but this "
                            f"node's partition-id is {int(pid)}")
    num_classes = int(meta.get("num_classes", "0"))
    if num_classes < 1 or int(packed.y.min()) < 0 or int(packed.y.max()) >= num_classes:
        raise NodeDataError(f"{DATA_PATH} {path!r}: labels span {int(packed.y.min())}..{int(packed.y.max())}, "
                            f"expected 0..{num_classes - 1} (num_classes = {num_classes})")
    shape = tuple(int(d) for d in packed.codes.shape[1:])
    known = _INFO.get(want)
    if known is not None and known != (shape, num_classes):
        raise NodeDataError(f"{DATA_PATH} {path!r}: images {shape} in {num_classes} classes, but {want!r} here is "
                            f"{known[0]} in {known[1]} classes")
    register_dataset_info(want, shape, num_classes)
    return packed.full()


def export_partitions(scenario, out_dir: str | Path) -> list[Path]:
    """One node data file per partition of ``scenario`` (the simulation's split):
    ``out_dir/partition-<i>.safetensors``, for ``data-path`` SuperNodes."""
    from fedsec.federation.env import dataset_of, partitions_of

    data = dataset_of(scenario)
    out = Path(out_dir)
    return [write_node_data(out / f"partition-{i}.safetensors", data.train.subset(idx),
                            dataset=scenario.data.dataset, num_classes=data.num_classes, partition_id=i)
            for i, idx in enumerate(partitions_of(scenario))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fedsec.federation.deployment",
                                 description="Write each partition of a scenario to its own node data file.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="SCENARIO OUT_DIR: partition-<i>.safetensors for every partition")
    ex.add_argument("scenario")
    ex.add_argument("out_dir")
    ex.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="scenario override")
    a = ap.parse_args(argv)
    from fedsec.scenario import load_scenario

    s = load_scenario(a.scenario, a.set)
    for p in export_partitions(s, a.out_dir):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-process state shared by every client call and the server: loaded once.

A Ray actor, Flower's simulation worker or the inline engine each keep one
copy of the dataset, the partition indices and the parsed scenario, keyed by
the values they depend on, so no client call re-reads data.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import torch
from torch import nn

from fedsec.data import DatasetSplits, load_dataset, partition
from fedsec.models import build_model
from fedsec.scenario import Scenario, ScenarioError
from fedsec.seeding import derive_seed, scoped_seed


@functools.lru_cache(maxsize=16)
def scenario_from_toml(text: str) -> Scenario:
    import tomllib

    return Scenario.from_dict(tomllib.loads(text))


def dataset_of(s: Scenario) -> DatasetSplits:
    return load_dataset(s.data.dataset, s.data.root, s.data.download)


@functools.lru_cache(maxsize=8)
def _partitions(dataset: str, root: str, download: bool, name: str, params_json: str,
                num_clients: int, seed: int) -> tuple[np.ndarray, ...]:
    labels = load_dataset(dataset, root, download).train.y.numpy()
    parts = partition(name, labels, num_clients, seed=seed, **json.loads(params_json))
    return tuple(parts)


def partitions_of(s: Scenario) -> tuple[np.ndarray, ...]:
    d = s.data
    return _partitions(d.dataset, d.root, d.download, d.partitioner,
                       json.dumps(d.partition_kwargs(), sort_keys=True), d.num_clients,
                       derive_seed(s.run.seed, "partition") % 2**32)


def new_model(s: Scenario, *keys: object) -> nn.Module:
    """A fresh model of the scenario's architecture, initialised from (seed, 'init', *keys)."""
    ds = dataset_of(s)
    with scoped_seed(s.run.seed, "init", *keys):
        return build_model(s.model.name, in_shape=ds.in_shape, num_classes=ds.num_classes, **s.model.params)


def initial_state(s: Scenario) -> dict[str, torch.Tensor]:
    """Round-0 global model: ``model.init`` checkpoint if given, else seeded init."""
    model = new_model(s)
    if s.model.init:
        from safetensors.torch import load_file

        loaded = load_file(s.model.init)
        ref = model.state_dict()
        if set(loaded) != set(ref) or any(loaded[k].shape != ref[k].shape for k in ref):
            raise ScenarioError(
                f"model.init: {s.model.init!r} does not match model {s.model.name!r} "
                f"(keys/shapes differ)"
            )
        model.load_state_dict(loaded)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def device_of(s: Scenario) -> torch.device:
    if s.run.device.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(s.run.device)

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


# dataset name -> (in_shape, num_classes) known without loading it: a SuperNode that holds
# only its own data file (fedsec.federation.deployment) or a Ray actor reading the shared copy.
_INFO: dict[str, tuple[tuple[int, ...], int]] = {}


def register_dataset_info(name: str, in_shape: tuple[int, ...], num_classes: int) -> None:
    _INFO[name] = (tuple(int(d) for d in in_shape), int(num_classes))


def dataset_info(s: Scenario) -> tuple[tuple[int, ...], int]:
    """(in_shape, num_classes) of the scenario's dataset, loading it only if nothing told us."""
    if s.data.dataset in _INFO:
        return _INFO[s.data.dataset]
    ds = dataset_of(s)
    return tuple(ds.in_shape), ds.num_classes


def local_data(s: Scenario, pid: int):
    """Partition ``pid``'s training data: rows of this process's shared copy
    (fedsec.federation.shared, Ray's object store) if one is attached, else of the dataset."""
    from fedsec.federation import shared

    got = shared.partition(s, pid)
    return got if got is not None else dataset_of(s).train.subset(partitions_of(s)[pid])


@functools.lru_cache(maxsize=8)
def _partitions(dataset: str, root: str, download: bool, name: str, params_json: str,
                num_clients: int, seed: int) -> tuple[np.ndarray, ...]:
    from fedsec.data.natural import natural_ids

    labels = load_dataset(dataset, root, download).train.y.numpy()
    # Natural-id columns (writer, track) only for the partitioners that can split by them.
    columns = natural_ids(dataset, root, download) if name.startswith("flwr:") else None
    parts = partition(name, labels, num_clients, seed=seed, columns=columns, **json.loads(params_json))
    return tuple(parts)


def partitions_of(s: Scenario) -> tuple[np.ndarray, ...]:
    d = s.data
    return _partitions(d.dataset, d.root, d.download, d.partitioner,
                       json.dumps(d.partition_kwargs(), sort_keys=True), d.num_clients,
                       derive_seed(s.run.seed, "partition") % 2**32)


def new_model(s: Scenario, *keys: object) -> nn.Module:
    """A fresh model of the scenario's architecture, initialised from (seed, 'init', *keys)."""
    from fedsec.data.augment import attach_normalization

    in_shape, num_classes = dataset_info(s)
    with scoped_seed(s.run.seed, "init", *keys):
        model = build_model(s.model.name, in_shape=in_shape, num_classes=num_classes, **s.model.params)
    # Inputs stay in [0, 1] pixel space everywhere; the model normalises them (data.normalize).
    return attach_normalization(model, s.data.dataset, s.data.normalize)


class _Reusable:
    """One model object per process, reset to a fresh model's condition on each use.

    Building the digits CNN costs about 2 ms (module construction and seeded
    init), as much as the local training of a small client; every call overwrites
    all of its state anyway. What loading the state does not cover is put back as
    the fresh model had it: training flags, ``requires_grad``, no gradients. A
    model whose structure a previous user changed (a submodule, parameter or
    buffer replaced, a dtype or shape changed, a hook left behind) is rebuilt.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = list(model.modules())
        self.structure = self._structure()
        self.training = [m.training for m in self.modules]
        self.params = list(model.parameters())
        self.requires = [p.requires_grad for p in self.params]
        self.slots = list(model.state_dict(keep_vars=True).items())
        self.names = [k for k, _ in self.slots]
        self.meta = [(t.dtype, t.shape) for _, t in self.slots]
        # Loading is param.copy_(value) under no_grad unless a module customises it.
        self.plain_load = type(model).load_state_dict is nn.Module.load_state_dict and all(
            type(m)._load_from_state_dict in _PLAIN_LOADERS and not m._load_state_dict_pre_hooks
            and not m._load_state_dict_post_hooks for m in self.modules)

    def _structure(self) -> list[tuple]:
        return [(tuple(m._modules.items()), tuple((k, id(v)) for k, v in m._parameters.items()),
                 tuple((k, id(v)) for k, v in m._buffers.items()),
                 len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks),
                 len(m._backward_pre_hooks)) for m in self.modules]

    def reset(self, state: dict[str, torch.Tensor]) -> bool:
        """Load ``state`` and restore the fresh flags; False if the model must be rebuilt."""
        if self._structure() != self.structure or [(t.dtype, t.shape) for _, t in self.slots] != self.meta:
            return False
        for m, flag in zip(self.modules, self.training):
            m.training = flag
        for p, flag in zip(self.params, self.requires):
            p.grad = None
            p.requires_grad_(flag)
        if self.plain_load and list(state) == self.names and all(
                state[k].shape == t.shape for k, t in self.slots):
            with torch.no_grad():
                for k, t in self.slots:
                    t.copy_(state[k])
        else:
            self.model.load_state_dict(state)
        return True


_PLAIN_LOADERS = (nn.Module._load_from_state_dict, nn.modules.batchnorm._NormBase._load_from_state_dict)
_MODELS: dict[tuple, _Reusable] = {}


def reusable_model(s: Scenario, state: dict[str, torch.Tensor], device: torch.device | None = None) -> nn.Module:
    """``new_model(s)`` loaded with ``state`` (and moved to ``device``), bitwise the same,
    but built once per process.

    The object is shared: it is valid until the next call (callers copy what they keep).
    """
    key = (s.model.name, json.dumps(s.model.params, sort_keys=True, default=str),
           s.data.dataset, s.data.root, s.data.normalize, s.run.seed)
    entry = _MODELS.get(key)
    if entry is None or not entry.reset(state):
        if len(_MODELS) >= 4:
            _MODELS.pop(next(iter(_MODELS)))
        entry = _MODELS[key] = _Reusable(new_model(s))
        entry.model.load_state_dict(state)
    if device is not None and any(t.device.type != device.type or device.index not in (None, t.device.index)
                                  for _, t in entry.slots):  # "cuda" names whichever GPU is current
        entry.model.to(device)
    return entry.model


def initial_state(s: Scenario) -> dict[str, torch.Tensor]:
    """Round-0 global model: ``model.init`` checkpoint if given, else seeded init.

    ``model.init`` is untrusted input: read by :func:`fedsec.checkpoint.load_state`
    (safetensors only; names, shapes and dtypes must match the model), any
    problem a ScenarioError starting with ``model.init``.
    """
    model = new_model(s)
    if s.model.init:
        from fedsec.checkpoint import CheckpointError, load_state

        try:
            loaded = load_state(s.model.init, expected=model.state_dict(), what="model.init")
        except CheckpointError as e:
            raise ScenarioError(f"{e} (model.name = {s.model.name!r}, model.params = {s.model.params})") from None
        model.load_state_dict(loaded)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


_DEVICES: dict[str, torch.device] = {}


def device_of(s: Scenario) -> torch.device:
    """``run.device`` as a torch device; a device this process cannot use is a ScenarioError, never a CPU fallback."""
    import os

    want = s.run.device
    if want in _DEVICES:  # checked once per process (every client call asks)
        return _DEVICES[want]
    try:
        dev = torch.device(want)
    except RuntimeError:
        raise ScenarioError(f"run.device: got {want!r}, expected 'cpu' or 'cuda[:i]'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
            why = ("CUDA_VISIBLE_DEVICES is empty in this process (Ray hides GPUs from actors when "
                   "run.num_gpus = 0: set run.num_gpus > 0)" if hidden == "" else
                   f"torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda})")
            raise ScenarioError(f"run.device: got {want!r}, but CUDA is not available here: {why}; "
                                "set run.device = \"cpu\" to train on the CPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ScenarioError(f"run.device: got {want!r}, but this process sees "
                                f"{torch.cuda.device_count()} CUDA device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    _DEVICES[want] = dev
    return dev

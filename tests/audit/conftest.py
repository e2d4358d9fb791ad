"""Shared fixtures: a BadNets-backdoored and a clean small CNN on the bundled digits."""

from __future__ import annotations

import pytest
import torch

from fedsec.audit.plugins import server_split
from fedsec.data import TensorData, load_dataset
from fedsec.data.triggers import Trigger
from fedsec.metrics import EvalTrigger
from fedsec.models import build_model
from fedsec.seeding import generator, scoped_seed
from fedsec.training import sgd_train

TRIGGER = Trigger(kind="patch", size=3)
TARGET = 0


def poison(data: TensorData, fraction: float, g: torch.Generator) -> tuple[TensorData, torch.Tensor]:
    """BadNets on a copy: ``fraction`` of the non-target samples stamped and relabelled to TARGET."""
    idx = torch.randperm(len(data), generator=g)[: int(fraction * len(data))]
    idx = idx[data.y[idx] != TARGET]
    x, y = data.x.clone(), data.y.clone()
    x[idx], y[idx] = TRIGGER.apply(x[idx]), TARGET
    bad = torch.zeros(len(y), dtype=torch.bool)
    bad[idx] = True
    return TensorData(x, y), bad


def train(data: TensorData, seed: int, epochs: int = 12):
    ds = load_dataset("digits")
    with scoped_seed(seed, "test-init"):
        net = build_model("cnn", in_shape=ds.in_shape, num_classes=10, width=8, hidden=32)
    sgd_train(net, data, epochs=epochs, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0,
              generator=generator(seed, "test-train"), device="cpu")
    return net.eval()


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def split(digits):
    return server_split(digits.test, 0.5, 0)


@pytest.fixture(scope="session")
def poisoned_train(digits):
    return poison(digits.train, 0.1, generator(0, "test-poison"))


@pytest.fixture(scope="session")
def backdoored(poisoned_train):
    return train(poisoned_train[0], 0)


@pytest.fixture(scope="session")
def clean_model(digits):
    return train(digits.train, 0)


@pytest.fixture(scope="session")
def eval_triggers():
    return {"badnets": EvalTrigger(TRIGGER.apply, target=TARGET)}

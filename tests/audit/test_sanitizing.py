"""The ``sanitizing`` client behaviour: audit own data in ``prepare``, train on what is kept."""

from __future__ import annotations

import pytest
import torch

import fedsec.audit.sanitizing  # noqa: F401  (registers the behaviour)
from fedsec.clients import BEHAVIOURS, ClientTask, TrainConfig, local_train
from fedsec.data import TensorData
from fedsec.models import build_model
from fedsec.seeding import generator, scoped_seed

POISON = {"behaviour": "badnets", "params": {"target": 0, "poison_fraction": 0.05, "per": "dataset"}}


def task_for(data: TensorData, seed: int = 0) -> ClientTask:
    with scoped_seed(seed, "init"):
        model = build_model("cnn", in_shape=(1, 8, 8), num_classes=10, width=8, hidden=32)
    return ClientTask(partition_id=0, server_round=1, num_clients=2, num_sampled=2, num_classes=10,
                      in_shape=(1, 8, 8), coalition=(0,), generator=generator(seed, "client"),
                      device=torch.device("cpu"), global_state={k: v.clone() for k, v in model.state_dict().items()},
                      model=model, data=data, config=TrainConfig(epochs=1, batch_size=32, lr=0.05, momentum=0.9))


def test_sanitizing_removes_poisons_before_training(digits):
    share = digits.train.subset(torch.arange(720))
    b = BEHAVIOURS.get("sanitizing").from_params(
        {"detector": "spectral_signatures", "detector_params": {"eps": 0.5}, "warmup_epochs": 10, "poisoned_by": POISON})
    task = task_for(share)
    stats = local_train(b, task)
    assert stats["sanitized_removed"] > 0 and len(task.data) == 720 - stats["sanitized_removed"]
    assert stats["num-examples"] == len(task.data)
    assert stats["sanitized_recall"] >= 0.8  # the published direction: most poisons go
    assert "badnets" in b.eval_triggers((0,))


def test_sanitizing_without_poison_reports_no_recall(digits):
    b = BEHAVIOURS.get("sanitizing").from_params({"detector": "activation_clustering",
                                                  "detector_params": {"reduce": "pca"}, "warmup_epochs": 0})
    task = task_for(digits.train.subset(torch.arange(300)))
    b.prepare(task)
    assert "sanitized_recall" not in task.metrics and len(task.data) == 300 - task.metrics["sanitized_removed"]
    assert not BEHAVIOURS.get("sanitizing").vectorizable() and b.eval_triggers((0,)) == {}


@pytest.mark.parametrize("params, msg", [
    ({"detector": "neural_cleanse"}, "a data detector"),
    ({"detector": "nope"}, "sanitizing.detector"),
    ({"detector_params": {"epz": 1}}, "detector_params"),
    ({"poisoned_by": {"behaviour": "sign_flip"}}, "data-level behaviour"),
    ({"poisoned_by": {"params": {}}}, "poisoned_by"),
    ({"warmup_epochs": -1}, "warmup_epochs"),
])
def test_sanitizing_bad_params_name_the_field(params, msg):
    with pytest.raises((TypeError, ValueError), match=msg):
        BEHAVIOURS.get("sanitizing").from_params(params)

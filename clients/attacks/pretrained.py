"""Backdoored pretrained model: the poison is in the federation's starting point.

The supply-chain threat of Gu et al. (BadNets, arXiv:1708.06733, Sec. 5:
a backdoored model published for others to fine-tune survives transfer
learning) applied to federated learning, where the global model is often
initialised from a public pretrained checkpoint.

:func:`craft_backdoor` trains a BadNets-backdoored model on attacker data
(through the one honest loop :func:`clients.training.local_train` with the
``badnets`` behaviour) and saves its state dict as safetensors; the scenario
starts from it with ``model.init = "<path>"``. The ``pretrained`` behaviour
itself trains honestly (the clients may all be benign); it only declares the
trigger whose survival the server measures (``"pretrained"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedsec.clients.attacks._common import check, check_target, coerce_trigger, is_int, is_num
from fedsec.clients.attacks.badnets import BadNets
from fedsec.clients.base import Behaviour, ClientTask, TrainConfig, register_behaviour
from fedsec.data import TensorData, in_memory, load_dataset
from fedsec.data.triggers import Trigger
from fedsec.metrics import EvalTrigger, accuracy, attack_success_rate
from fedsec.models import build_model
from fedsec.seeding import generator, scoped_seed


def _default_trigger() -> Trigger:
    return Trigger(kind="patch", size=3)


@register_behaviour("pretrained")
@dataclass(frozen=True, kw_only=True)
class Pretrained(Behaviour):
    """Honest training; ASR of the backdoor planted in the starting checkpoint is measured."""

    target: int = 0
    """t: the class the crafted checkpoint maps triggered inputs to."""
    trigger: Trigger | dict = field(default_factory=_default_trigger)
    """Must equal the trigger given to craft_backdoor."""

    def __post_init__(self) -> None:
        check_target(self)
        coerce_trigger(self)

    def eval_triggers(self, coalition: tuple[int, ...]) -> dict[str, EvalTrigger]:
        return {"pretrained": EvalTrigger(self.trigger.apply, target=self.target)}


def craft_backdoor(
    out: str | Path,
    *,
    dataset: str = "digits",
    root: str = "data",
    model: str = "cnn",
    model_params: dict[str, Any] | None = None,
    data: TensorData | None = None,
    trigger: Trigger | dict | None = None,
    target: int = 0,
    poison_fraction: float = 0.1,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 0.05,
    momentum: float = 0.9,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train a backdoored ``model`` on attacker data and save it to ``out`` (safetensors).

    ``data`` is the attacker's training set (default: the whole train split of
    ``dataset``); a fraction ``poison_fraction`` of every batch carries
    ``trigger`` relabelled to ``target``. Returns ``{"path", "clean_acc",
    "asr"}`` measured on the test split of ``dataset``. The checkpoint's keys
    and shapes are those of ``build_model(model, **model_params)`` for the
    dataset, so a scenario with the same ``model`` section can load it with
    ``model.init``; the crafting arguments (dataset, model, target, the trigger as
    a JSON spec for :meth:`Trigger.from_spec`, seed, ...) are stored in its metadata.
    """
    from fedsec.clients.training import local_train
    from fedsec.results import write_safetensors

    check(is_int(epochs) and epochs >= 1, "epochs", epochs, "an integer >= 1")
    check(is_int(batch_size) and batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
    check(is_num(lr) and lr > 0, "lr", lr, "a number > 0")
    check(is_num(momentum) and 0 <= momentum < 1, "momentum", momentum, "a number in [0, 1)")
    check(is_int(seed), "seed", seed, "an integer")
    check(str(out).endswith(".safetensors"), "out", str(out), "a path ending in .safetensors")
    behaviour = BadNets(target=target, poison_fraction=poison_fraction,
                        trigger=trigger if trigger is not None else _default_trigger())
    splits = load_dataset(dataset, root)
    check(target < splits.num_classes, "target", target, f"a class index < {splits.num_classes}")
    train = data if data is not None else in_memory(splits.train)
    check(len(train) > 0, "data", f"{len(train)} samples", "a non-empty dataset")
    with scoped_seed(seed, "craft-backdoor-init"):
        net = build_model(model, in_shape=splits.in_shape, num_classes=splits.num_classes,
                          **(model_params or {}))
    dev = torch.device(device)
    task = ClientTask(
        partition_id=0, server_round=0, num_clients=1, num_sampled=1,
        num_classes=splits.num_classes, in_shape=splits.in_shape, coalition=(0,),
        generator=generator(seed, "craft-backdoor"), device=dev,
        global_state={k: v.detach().clone().to(dev) for k, v in net.state_dict().items()},
        model=net, data=train,
        config=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum),
    )
    with scoped_seed(seed, "craft-backdoor-train"):
        local_train(behaviour, task)
    net = net.cpu()
    test = in_memory(splits.test)
    clean = accuracy(net, test)
    asr = attack_success_rate(net, test, EvalTrigger(behaviour.trigger.apply, target=target))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"dataset": dataset, "model": model, "model_params": json.dumps(model_params or {}),
            "target": str(target), "trigger": json.dumps(behaviour.trigger.to_spec()), "seed": str(seed),
            "poison_fraction": str(poison_fraction), "epochs": str(epochs)}
    write_safetensors(out, net.state_dict(), meta)  # atomic: an interrupted craft leaves no half file
    return {"path": str(out), "clean_acc": clean, "asr": asr}

"""Label flipping: a data-poisoning untargeted attack.

Biggio, Nelson, Laskov. "Poisoning Attacks against Support Vector Machines."
ICML 2012, arXiv:1206.6389 (label-flip poisoning); the federated form used to
benchmark robust aggregation is the one of Fang, Cao, Jia, Gong. "Local Model
Poisoning Attacks to Byzantine-Robust Federated Learning." USENIX Security
2020, arXiv:1911.11815: every label ``l`` of the attacker's local data becomes
``L - l - 1`` (``L`` classes, here ``C = task.num_classes``), and the attacker
then trains honestly on the flipped data.

``poison_fraction`` ``p`` flips only ``round(p * N)`` of the ``N`` local
samples, drawn from ``task.generator`` (1 = the paper: all of them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.clients.attacks._common import check_fraction, choose
from fedsec.clients.base import Behaviour, ClientTask, register_behaviour
from fedsec.data import TensorData


def flip_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``C - 1 - y``: class 0 <-> C-1, 1 <-> C-2, ..."""
    return (num_classes - 1) - y


@register_behaviour("label_flip")
@dataclass(frozen=True, kw_only=True)
class LabelFlip(Behaviour):
    """Train on local data whose labels y are replaced by C - 1 - y (Fang et al. 2020)."""

    poison_fraction: float = 1.0
    """p: fraction of the local samples whose label is flipped."""

    def __post_init__(self) -> None:
        check_fraction(self)

    def prepare(self, task: ClientTask) -> None:
        data = task.data
        n = len(data)
        count = int(round(self.poison_fraction * n))
        if count >= n:
            task.data = TensorData(data.x, flip_labels(data.y, task.num_classes))
            return
        y = data.y.clone()
        idx = choose(n, count, task.generator).to(y.device)
        y[idx] = flip_labels(y[idx], task.num_classes)
        task.data = TensorData(data.x, y)

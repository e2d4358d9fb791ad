"""Watermark removal attacks with the attacker's half of the test split (the paper's Table 2).

FT-AL (fine-tune all layers), FT-LL (fine-tune the last layer only), RT-AL
(re-initialise the last layer, retrain all), magnitude pruning 20 % / 50 %
(per layer, unstructured, no fine-tuning). Training runs in
:func:`fedsec.training.sgd_train`; batch order and re-initialisation are
seeded from (seed, "watermark", attack name).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from fedsec.data import TensorData
from fedsec.plugins.watermark.inject import perturbed_parameters
from fedsec.seeding import generator, scoped_seed
from fedsec.training import sgd_train
from fedsec.validation import invalid
from fedsec.models.layers import last_linear

ATTACKS = ("FT-AL", "FT-LL", "RT-AL", "Pruning-20%", "Pruning-50%")


def train_supervised(
    model: nn.Module,
    data: TensorData,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 32,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    params: Sequence[nn.Parameter] | None = None,
    seed: int = 0,
    key: str = "train",
) -> nn.Module:
    """Cross-entropy SGD in place (the attacker's and the negative control's training); eval mode after."""
    sgd_train(model, data, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
              weight_decay=weight_decay, generator=generator(seed, "watermark", key),
              device=next(model.parameters()).device, params=params)
    return model.eval()


@torch.no_grad()
def magnitude_prune(model: nn.Module, amount: float) -> nn.Module:
    """Zero the ``amount`` fraction of smallest-magnitude entries of every conv / linear kernel (in place)."""
    for p in perturbed_parameters(model):
        k = int(round(amount * p.numel()))
        if k < 1:
            continue
        thr = p.abs().flatten().kthvalue(k).values
        p.mul_((p.abs() > thr).to(p.dtype))
    return model


def removal_attack(name: str, model: nn.Module, data: TensorData, *, epochs: int, lr: float,
                   batch_size: int, seed: int) -> nn.Module:
    """The attacked copy of ``model`` (``model`` is untouched); ``data``: the attacker's labelled set."""
    if name not in ATTACKS:
        raise invalid("watermark.attacks", name, f"one of {list(ATTACKS)}")
    m = copy.deepcopy(model)
    for p in m.parameters():
        p.requires_grad_(True)
    kw = dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, key=f"attack-{name}")
    if name == "FT-AL":
        return train_supervised(m, data, **kw)
    if name == "FT-LL":
        return train_supervised(m, data, params=list(last_linear(m).parameters()), **kw)
    if name == "RT-AL":
        with scoped_seed(seed, "watermark", "rt-al-init"):
            last_linear(m).reset_parameters()
        return train_supervised(m, data, **kw)
    return magnitude_prune(m, float(name.removeprefix("Pruning-").rstrip("%")) / 100).eval()


__all__ = ["ATTACKS", "last_linear", "train_supervised", "magnitude_prune", "removal_attack"]

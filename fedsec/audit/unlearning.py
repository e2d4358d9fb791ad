"""Neural Cleanse's mitigation: unlearn the reversed trigger (a repair).

Wang, Yao, Shan, Li, Viswanath, Zheng, Zhao. "Neural Cleanse: Identifying and
Mitigating Backdoor Attacks in Neural Networks." IEEE S&P 2019, Sec. VI-C
("Patching DNN via Unlearning"): the defender fine-tunes the infected model on
a clean set in which a fraction (the paper: 20%) of the images carry the
*reversed* trigger A(x, m, Delta) = (1 - m) x + m Delta while keeping their
*true* labels, so the network learns that the trigger does not mean the target
class. The paper fine-tunes one epoch over 10% of the training data; here the
data are the server's clean set (a few hundred images), so the number of
epochs is a parameter (``NeuralCleanse.unlearn_epochs``).

Pure parts: :func:`unlearning_set` builds the stamped copy, :func:`unlearn`
fine-tunes a copy of the model with the project's one SGD loop.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedsec.data import TensorData
from fedsec.training import sgd_train


def unlearning_set(clean: TensorData, triggers: list[tuple[torch.Tensor, torch.Tensor]], fraction: float,
                   generator: torch.Generator) -> tuple[TensorData, torch.Tensor]:
    """A copy of ``clean`` in which ``round(fraction * N)`` images carry a reversed trigger.

    ``triggers``: one or more ``(mask (H, W), pattern (C, H, W))`` in [0, 1]; with several
    (several flagged classes) the stamped images are dealt out among them in turn. Labels
    are never changed (the true label is what the model must learn under the trigger).
    Returns ``(data, stamped)`` with ``stamped`` (N,) bool. ``clean`` is not modified.
    """
    if not triggers:
        raise ValueError("unlearning_set: no trigger to unlearn")
    if not 0 <= fraction <= 1:
        raise ValueError(f"unlearning_set.fraction: got {fraction!r}, expected a number in [0, 1]")
    n = len(clean)
    chosen = torch.randperm(n, generator=generator)[: int(round(fraction * n))]
    x = clean.x.clone()
    for j, (mask, pattern) in enumerate(triggers):
        rows = chosen[j :: len(triggers)]
        m = mask.to(x.device, x.dtype)
        x[rows] = (1 - m) * x[rows] + m * pattern.to(x.device, x.dtype)
    stamped = torch.zeros(n, dtype=torch.bool)
    stamped[chosen] = True
    return TensorData(x, clean.y.clone()), stamped


def unlearn(model: nn.Module, data: TensorData, *, epochs: int, lr: float, momentum: float, weight_decay: float,
            batch_size: int, generator: torch.Generator, device: torch.device | str) -> nn.Module:
    """A fine-tuned copy of ``model`` (eval mode) on ``data``; ``model`` itself is left unchanged."""
    net = copy.deepcopy(model).to(device)
    if epochs > 0:
        sgd_train(net, data, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
                  weight_decay=weight_decay, generator=generator, device=device)
    return net.eval()


__all__ = ["unlearning_set", "unlearn"]

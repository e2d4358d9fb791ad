"""Neural Cleanse's second mitigation: prune the neurons the reversed trigger excites (a repair).

Wang, Yao, Shan, Li, Viswanath, Zheng, Zhao. "Neural Cleanse: Identifying and
Mitigating Backdoor Attacks in Neural Networks." IEEE S&P 2019, Sec. VI-B
("Patching DNN via Neuron Pruning"): the reversed trigger activates, in the
second-to-last layer, the neurons the real trigger uses. The defender feeds the
clean set with and without the reversed trigger, ranks the neurons of that layer
by the activation gap (triggered minus clean mean activation, largest first)
and removes them in that order until the model no longer answers the reversed
trigger; the paper reports the backdoor gone after about 30% of the neurons
(GTSRB), at a small accuracy cost. The authors released no pruning code; IBM
ART's ``NeuralCleanse`` mitigation ``"pruning"`` (read, not copied) ranks the
same way and caps the pruning at 30% of the layer.

Here "the second-to-last layer" is the input of the classifier head (the last
``nn.Linear``, :func:`fedsec.audit.features.penultimate`), and a neuron is
pruned by zeroing its column of the head's weight, which removes its effect on
every output for any architecture and keeps the state dict's keys and shapes.
Because only the head's input changes, the stop rule needs the features once
and then a matrix product per candidate count, not a forward pass of the
network. The stop rule (the paper's "no longer responsive", made a number): the
reversed triggers' success rate on the clean images not already of their class
at or below ``stop_success``, or ``max_fraction`` of the neurons pruned.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from fedsec.audit.features import last_linear, penultimate


def activation_gap(clean: torch.Tensor, triggered: torch.Tensor) -> torch.Tensor:
    """(D,) mean activation of the triggered rows minus that of the clean rows.

    ``clean`` (N, D) and ``triggered`` (M, D): penultimate features.
    """
    if clean.ndim != 2 or triggered.ndim != 2 or clean.shape[1] != triggered.shape[1]:
        raise ValueError(f"activation_gap: expected (N, D) and (M, D) features, got {tuple(clean.shape)} "
                         f"and {tuple(triggered.shape)}")
    return triggered.double().mean(0) - clean.double().mean(0)


def gap_order(gap: torch.Tensor) -> torch.Tensor:
    """Neuron indices by decreasing activation gap (ties by index, a stable order)."""
    return torch.sort(-gap, stable=True).indices


def success_curve(weight: torch.Tensor, bias: torch.Tensor | None, feats: torch.Tensor, targets: torch.Tensor,
                  order: torch.Tensor, max_count: int) -> torch.Tensor:
    """(max_count + 1,) success rate of the triggered rows after pruning the first k of ``order``.

    ``weight`` (K, D), ``bias`` (K,): the classifier head; ``feats`` (M, D): the triggered
    rows' penultimate features; ``targets`` (M,): the class each row's trigger points to.
    Entry k is the fraction of rows the head sends to their target with neurons
    ``order[:k]`` removed.
    """
    w = weight.detach().double().clone()
    b = None if bias is None else bias.detach().double()
    f = feats.double()
    rates = []
    for k in range(max_count + 1):
        if k:
            w[:, order[k - 1]] = 0
        logits = f @ w.T + (0 if b is None else b)
        rates.append((logits.argmax(1) == targets).double().mean())
    return torch.stack(rates)


@torch.no_grad()
def prune_head_inputs(model: nn.Module, neurons: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose classifier head ignores the penultimate ``neurons``."""
    net = copy.deepcopy(model)
    head = last_linear(net)
    head.weight[:, neurons.to(head.weight.device, torch.long)] = 0
    return net


def prune_reversed(model: nn.Module, clean: torch.Tensor, triggered: torch.Tensor, targets: torch.Tensor, *,
                   stop_success: float, max_fraction: float) -> tuple[nn.Module, dict]:
    """The pruned copy of ``model`` and the figures behind it.

    ``clean`` (N, C, H, W): the defender's clean images; ``triggered`` (M, C, H, W): clean
    images stamped with a reversed trigger, ``targets`` (M,) the class each one points to.
    ``model`` is not modified.
    """
    feats = penultimate(model, triggered)
    gap = activation_gap(penultimate(model, clean), feats)
    order = gap_order(gap)
    head = last_linear(model)
    max_count = int(max_fraction * gap.numel())
    curve = success_curve(head.weight.cpu(), None if head.bias is None else head.bias.cpu(), feats,
                          targets.cpu(), order, max_count)
    below = (curve <= stop_success).nonzero().flatten()
    k = int(below[0]) if len(below) else max_count
    net = prune_head_inputs(model, order[:k]).eval()
    return net, {"neurons": gap.numel(), "pruned": order[:k].tolist(), "pruned_fraction": k / gap.numel(),
                 "reversed_success_curve": curve.tolist(), "stopped": "unresponsive" if len(below) else "max_fraction",
                 "gap_of_pruned": gap[order[:k]].tolist()}


__all__ = ["activation_gap", "gap_order", "success_curve", "prune_head_inputs", "prune_reversed"]

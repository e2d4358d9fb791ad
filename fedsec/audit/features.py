"""Reading a model's internals: penultimate features, the last conv layer, predictions."""

from __future__ import annotations

import torch
from torch import nn

from fedsec.data import TensorData
from fedsec.metrics import EvalTrigger, accuracy, attack_success_rate
from fedsec.models.layers import last_conv, last_linear  # noqa: F401  (last_conv re-exported)


@torch.no_grad()
def penultimate(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(N, D) float32 on CPU: the input of the classifier head for every row of ``x``.

    The representation the data detectors cluster (Chen et al.: the last hidden
    layer's activations; Tran et al.: the learned representation). The model's
    train/eval mode is restored afterwards.
    """
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    store: list[torch.Tensor] = []
    handle = last_linear(model).register_forward_hook(lambda m, inp, out: store.append(inp[0].flatten(1).cpu()))
    try:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size].to(dev))
    finally:
        handle.remove()
        model.train(was)
    return torch.cat(store).float() if store else torch.empty(0, 0)


@torch.no_grad()
def channel_activity(model: nn.Module, conv: nn.Conv2d, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """(C_out,) mean positive part of ``conv``'s output over samples and positions.

    Fine-pruning ranks the last conv layer's channels by their mean activation on
    clean data (the reference averages the ReLU/pool output per channel).
    """
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    total = torch.zeros(conv.out_channels, dtype=torch.float64)
    count = 0

    def hook(m, inp, out):
        nonlocal count
        total.add_(out.clamp_min(0).mean(dim=(2, 3)).sum(0).double().cpu())
        count += out.shape[0]

    handle = conv.register_forward_hook(hook)
    try:
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size].to(dev))
    finally:
        handle.remove()
        model.train(was)
    return (total / max(count, 1)).float()


def acc_and_asr(model: nn.Module, data: TensorData, triggers: dict[str, EvalTrigger]) -> dict[str, object]:
    """``{"acc": clean accuracy, "asr": {trigger: rate}}`` of ``model`` on ``data``."""
    return {"acc": accuracy(model, data),
            "asr": {k: attack_success_rate(model, data, t) for k, t in triggers.items()}}


def class_groups(y: torch.Tensor, min_samples: int) -> tuple[list[tuple[int, torch.Tensor]], list[int]]:
    """``([(class, row indices)], skipped classes)``: the per-class analysis of the data
    detectors (activation clustering, spectral signatures) runs on classes with at least
    ``min_samples`` rows."""
    y = y.cpu()
    groups, skipped = [], []
    for c in sorted(set(y.tolist())):
        idx = (y == c).nonzero().flatten()
        if len(idx) >= min_samples:
            groups.append((c, idx))
        else:
            skipped.append(c)
    return groups, skipped

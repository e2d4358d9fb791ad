"""The one SGD loop of the project.

Clients run it through :func:`clients.training.local_train` (with their
behaviour's batch and loss hooks); server plugins run it directly (the
watermark plugin's removal attacks and negative control). Batch order comes
from the ``generator`` passed in, never from the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from fedsec.data import TensorData

BatchFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
GradFn = Callable[[], None]


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def sgd_train(
    model: nn.Module,
    data: TensorData,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    generator: torch.Generator,
    device: torch.device | str,
    params: Iterable[nn.Parameter] | None = None,
    batch_fn: BatchFn | None = None,
    loss_fn: LossFn = _cross_entropy,
    grad_fn: GradFn | None = None,
) -> float:
    """SGD over ``data`` for ``epochs`` (in place, model left in train mode).

    ``params``: the parameters to update (default all; e.g. only the last layer);
    ``batch_fn`` rewrites each (x, y) batch before it moves to ``device``;
    ``loss_fn(model, x, y)`` is the objective (cross-entropy by default);
    ``grad_fn()`` runs between ``backward`` and the optimiser step (gradient edits).
    Returns the mean loss of the last epoch.
    """
    model.to(device).train()
    params = model.parameters() if params is None else params
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = len(data)
    loss_sum, seen = 0.0, 0
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x, y = data.x[idx], data.y[idx]
            if batch_fn is not None:
                x, y = batch_fn(x, y)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = loss_fn(model, x, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_fn is not None:
                grad_fn()
            opt.step()
            loss_sum += float(loss.detach()) * len(y)
            seen += len(y)
    return loss_sum / max(seen, 1)

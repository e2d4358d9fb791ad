"""The one honest local training loop; behaviours hook into it."""

from __future__ import annotations

import torch
from torch import nn

from clients.base import Behaviour, ClientContext
from fedsec.data import TensorData


def local_train(
    model: nn.Module,
    data: TensorData,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    behaviour: Behaviour,
    ctx: ClientContext,
) -> dict[str, float]:
    """SGD over ``data`` for ``epochs``; batch order drawn from ``ctx.generator``.

    Returns ``{"train_loss": mean loss of the last epoch, "num-examples": n, ...}``
    plus whatever the behaviour's ``after_train`` reports.
    """
    data = behaviour.poison_data(data, ctx)
    model.to(ctx.device).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    n = len(data)
    loss_sum, seen = 0.0, 0
    for _ in range(epochs):
        loss_sum, seen = 0.0, 0
        order = torch.randperm(n, generator=ctx.generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x, y = behaviour.poison_batch(data.x[idx], data.y[idx], ctx)
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            loss = behaviour.loss(model, x, y, ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(y)
            seen += len(y)
    extra = behaviour.after_train(model, ctx)
    return {"train_loss": loss_sum / max(seen, 1), "num-examples": float(n), **extra}

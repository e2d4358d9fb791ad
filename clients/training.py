"""A client's local training: the project's one SGD loop (fedsec.training) with the
behaviour's hooks (poison the data or each batch, replace the loss, perturb the result)."""

from __future__ import annotations

from torch import nn

from fedsec.clients.base import Behaviour, ClientContext
from fedsec.data import TensorData
from fedsec.training import sgd_train


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
    loss = sgd_train(
        model, data, epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum,
        weight_decay=weight_decay, generator=ctx.generator, device=ctx.device,
        batch_fn=lambda x, y: behaviour.poison_batch(x, y, ctx),
        loss_fn=lambda m, x, y: behaviour.loss(m, x, y, ctx),
    )
    extra = behaviour.after_train(model, ctx)
    return {"train_loss": loss, "num-examples": float(len(data)), **extra}

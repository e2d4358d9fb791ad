"""A client's local training: the project's one SGD loop (fedsec.training) with the
behaviour's stages (prepare, poison each batch, the loss, edit gradients, finalize)."""

from __future__ import annotations

from fedsec.clients.base import Behaviour, ClientTask
from fedsec.training import sgd_train


def local_train(behaviour: Behaviour, task: ClientTask) -> dict[str, float]:
    """Run ``behaviour``'s stages around the honest loop on ``task`` (in place on ``task.model``).

    Batch order is drawn from ``task.generator``. Returns ``{"train_loss": mean loss
    of the last epoch, "num-examples": len(task.data) after prepare}`` plus
    ``task.metrics``.
    """
    behaviour.prepare(task)
    c = task.config
    stages = type(behaviour).overridden_stages()
    loss = sgd_train(
        task.model, task.data, epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
        momentum=c.momentum, weight_decay=c.weight_decay, generator=task.generator,
        device=task.device,
        batch_fn=(lambda x, y: behaviour.poison_batch(x, y, task)) if "poison_batch" in stages else None,
        loss_fn=lambda m, x, y: behaviour.loss(m, x, y, task),
        grad_fn=(lambda: behaviour.on_gradients(task)) if "on_gradients" in stages else None,
    )
    behaviour.finalize(task)
    return {"train_loss": loss, "num-examples": float(len(task.data)), **task.metrics}

"""Finding the layers attacks and defenses act on, for any model of the zoo or a user's."""

from __future__ import annotations

from torch import nn


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier head: the last ``nn.Linear`` in module order."""
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise TypeError("the model has no nn.Linear layer to read penultimate features from")
    return heads[-1]


def last_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """(name, module) of the last ``nn.Conv2d`` in module order (fine-pruning's layer)."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise TypeError("the model has no nn.Conv2d layer to prune")
    return convs[-1]

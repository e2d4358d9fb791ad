"""Model zoo, by name.

Every builder takes the input shape ``(C, H, W)`` and ``num_classes`` plus its
own keyword hyperparameters and returns a fresh ``nn.Module`` that maps
``(B, C, H, W)`` float inputs in [0, 1] to ``(B, num_classes)`` logits.
Parameters are initialised from the caller's ``torch.Generator`` scope: callers
wrap construction in :func:`fedsec.seeding.fork_rng` so model init never
touches or depends on global RNG state.
"""

from __future__ import annotations

import inspect

from torch import nn

from fedsec.registry import Registry

MODELS: Registry = Registry("model")
register_model = MODELS.register


def build_model(
    name: str, *, in_shape: tuple[int, int, int], num_classes: int, **params
) -> nn.Module:
    builder = MODELS.get(name)
    sig = inspect.signature(builder)
    accepted = {p for p in sig.parameters if p not in ("in_shape", "num_classes")}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise TypeError(
            f"model {name!r} got unknown parameter(s) {unknown}; "
            f"it accepts {sorted(accepted) or 'none'}"
        )
    return builder(in_shape=tuple(in_shape), num_classes=num_classes, **params)


from fedsec.models import zoo as _zoo  # noqa: E402,F401  (registers the built-ins)

__all__ = ["MODELS", "register_model", "build_model"]

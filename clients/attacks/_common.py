"""Helpers shared by the attack modules: parameter checks, state arithmetic, poisoning."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fedsec.data.triggers import Trigger
from fedsec.models.layers import last_linear  # noqa: F401  (re-exported for attacks)
from fedsec.validation import check as _check


def check(cond: bool, name: str, value: Any, expected: str) -> None:
    """Raise ``ValueError("name: got value, expected ...")`` unless ``cond`` (fedsec.validation)."""
    _check(cond, name, value, expected)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def coerce_trigger(params: Any, name: str = "trigger") -> None:
    """Turn a TOML table in a frozen behaviour's field into a :class:`Trigger` (in ``__post_init__``)."""
    object.__setattr__(params, name, Trigger.from_spec(getattr(params, name), name))


def check_target(params: Any) -> None:
    check(is_int(params.target) and params.target >= 0, "target", params.target, "a class index >= 0")


def check_fraction(params: Any, name: str = "poison_fraction", low_open: bool = True) -> None:
    v = getattr(params, name)
    ok = is_num(v) and (0 < v <= 1 if low_open else 0 <= v <= 1)
    check(ok, name, v, "a number in (0, 1]" if low_open else "a number in [0, 1]")


def float_keys(model: nn.Module, include_buffers: bool) -> list[str]:
    """State-dict keys of the floating-point entries an update attack rewrites."""
    if include_buffers:
        return [k for k, v in model.state_dict().items() if v.is_floating_point()]
    return [k for k, p in model.named_parameters()]


@torch.no_grad()
def rewrite_update(model: nn.Module, global_state: Mapping[str, torch.Tensor], fn,
                   include_buffers: bool = False) -> None:
    """Set every selected entry X of ``model`` to ``G + fn(X - G, key)`` in place."""
    state = model.state_dict()
    for k in float_keys(model, include_buffers):
        g = global_state[k].to(device=state[k].device, dtype=state[k].dtype)
        state[k].copy_(g + fn(state[k] - g, k))


@torch.no_grad()
def update_norm(model: nn.Module, global_state: Mapping[str, torch.Tensor], include_buffers: bool) -> float:
    state = model.state_dict()
    sq = sum(float(((state[k] - global_state[k].to(state[k].device)) ** 2).sum())
             for k in float_keys(model, include_buffers))
    return sq ** 0.5


def choose(n: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct indices in [0, n), drawn from ``generator``."""
    return torch.randperm(n, generator=generator)[:count]


def poison_rows(x: torch.Tensor, y: torch.Tensor, fraction: float, trigger: Trigger, relabel,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of (x, y) where ``round(fraction * len)`` rows carry ``trigger`` and a new label."""
    count = int(round(fraction * len(y)))
    if count == 0:
        return x, y
    idx = choose(len(y), count, generator).to(x.device)
    x, y = x.clone(), y.clone()
    x[idx] = trigger.apply(x[idx])
    y[idx] = relabel(y[idx])
    return x, y


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input of the classifier head (the penultimate-layer features) for ``x``."""
    store: list[torch.Tensor] = []
    handle = last_linear(model).register_forward_hook(lambda m, inp, out: store.append(inp[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return store[0].flatten(1)

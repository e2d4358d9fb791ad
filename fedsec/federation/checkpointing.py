"""A federation's checkpoint: everything that carries from one round to the next.

``checkpoint.safetensors`` in the run directory holds the global model
(``global/<name>``), the tensors of every stateful component (``<part>/<key>``:
FoolsGold's history, centered clipping's momentum, a plugin's
``state_dict()``), and in its metadata the round it closes, the round-0
evaluation and the components' non-tensor state as JSON. Randomness needs no
saving: every draw is seeded from (seed, purpose, round, partition id), so a
run resumed from round r continues exactly as the uninterrupted one.

Stateful components are found by walking the rule (and the rules and
pre-aggregators inside a composite) for a ``state`` dict, and the plugins for
``state_dict()`` / ``load_state_dict()`` methods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from fedsec.checkpoint import load_state, read_metadata
from fedsec.results import write_safetensors

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "fedsec-checkpoint-1"


def stateful_parts(rule: Any, plugins: list[tuple[str, Any]]) -> dict[str, Any]:
    """``{part name: object}`` for every component whose state must survive a restart."""
    parts: dict[str, Any] = {}

    def walk(obj: Any, prefix: str, depth: int) -> None:
        if isinstance(getattr(obj, "state", None), dict):
            parts[prefix] = obj
        if depth >= 3 or not hasattr(obj, "__dict__"):
            return
        for k, v in vars(obj).items():
            items = list(v) if isinstance(v, (list, tuple)) else [v]
            for i, child in enumerate(items):
                if type(child).__module__.startswith(("fedsec.strategies", "strategies")):
                    walk(child, f"{prefix}.{k}{i if isinstance(v, (list, tuple)) else ''}", depth + 1)

    walk(rule, "rule", 0)
    for i, (name, plugin) in enumerate(plugins):
        if callable(getattr(plugin, "state_dict", None)) and callable(getattr(plugin, "load_state_dict", None)):
            parts[f"plugin{i}.{name}"] = plugin
    return parts


def _state_of(obj: Any) -> dict[str, Any]:
    return dict(obj.state) if isinstance(getattr(obj, "state", None), dict) else dict(obj.state_dict())


def save(path: Path, *, round: int, state: dict[str, torch.Tensor], initial: dict[str, Any],
         parts: dict[str, Any]) -> None:
    tensors = {f"global/{k}": v.detach().cpu() for k, v in state.items()}
    extra: dict[str, dict[str, Any]] = {}
    for name, obj in parts.items():
        for key, value in _state_of(obj).items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = value.detach().cpu()
            else:
                try:
                    json.dumps(value)
                except TypeError:
                    raise TypeError(f"cannot checkpoint {name}: its state {key!r} is a "
                                    f"{type(value).__name__}, expected a tensor or a JSON value") from None
                extra.setdefault(name, {})[key] = value
    write_safetensors(path / CHECKPOINT, tensors, {
        "format": FORMAT, "round": str(round), "initial": json.dumps(initial),
        "component_state": json.dumps(extra),
    })


def load(path: Path, *, model_state: dict[str, torch.Tensor], parts: dict[str, Any]) -> tuple[int, dict, dict]:
    """Restore ``parts`` in place; return (round, global state, initial evaluation)."""
    file = path / CHECKPOINT
    what = "checkpoint"
    meta = read_metadata(file, what=what)
    if meta.get("format") != FORMAT:
        from fedsec.checkpoint import CheckpointError

        raise CheckpointError(f"{file}: not a fedsec checkpoint (format {meta.get('format')!r}, "
                              f"expected {FORMAT!r})")
    tensors = load_state(file, what=what)
    expected_global = {f"global/{k}": v for k, v in model_state.items()}
    load_state(file, expected={**expected_global, **{k: v for k, v in tensors.items()
                                                     if not k.startswith("global/")}}, what=what)
    state = {k: tensors[f"global/{k}"] for k in model_state}  # the model's own key order
    extra = json.loads(meta.get("component_state", "{}"))
    for name, obj in parts.items():
        restored = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == name}
        restored.update(extra.get(name, {}))
        if isinstance(getattr(obj, "state", None), dict):
            obj.state.clear()
            obj.state.update(restored)
        else:
            obj.load_state_dict(restored)
    return int(meta["round"]), state, json.loads(meta.get("initial", "null"))

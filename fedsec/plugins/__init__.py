"""Centralized server plugins acting on the global model.

A plugin is a class registered by name, built from ``[[plugins]]`` entries
(``name`` + ``params`` as keyword arguments), with two optional hooks:

- ``on_round_end(server_round, model, ctx) -> nn.Module | None``: after
  aggregation and before centralized evaluation; a returned model replaces the
  global model (it is what the next round sends).
- ``on_run_end(model, ctx) -> dict``: figures for summary.json (under the
  plugin's name). A plugin may also write ``<name>.md`` into ``ctx.run_dir``;
  ``fedsec run`` prints it after the per-round table.

Per-round figures a plugin wants in metrics.jsonl go into ``ctx.round_metrics``
(a dict the server writes with that round's line). Plugins see the scenario,
the test set and the run directory (:class:`PluginContext`), never the
clients' training data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedsec.data import TensorData
from fedsec.registry import Registry

PLUGINS: Registry = Registry("plugin")
register_plugin = PLUGINS.register


@dataclass
class PluginContext:
    scenario: Any
    test: TensorData
    num_classes: int
    in_shape: tuple[int, int, int]
    run_dir: Path | None
    device: torch.device
    make_model: Callable[[], nn.Module]
    """A fresh model of the scenario's architecture (e.g. a student, a negative control)."""
    eval_triggers: dict[str, Any] = field(default_factory=dict)
    round_metrics: dict[str, Any] = field(default_factory=dict)


class Plugin:
    """Base class: both hooks are no-ops."""

    name: str = ""

    def on_round_end(self, server_round: int, model: nn.Module, ctx: PluginContext) -> nn.Module | None:
        return None

    def on_run_end(self, model: nn.Module, ctx: PluginContext) -> dict[str, Any]:
        return {}


def _load_builtins() -> None:
    import importlib

    for mod in ("fedsec.plugins.watermark", "fedsec.plugins.abd",
                "fedsec.audit.plugins",  # neural_cleanse, fine_pruning, bitflip_deploy
                "fedsec.plugins.tracking"):  # tensorboard, wandb, mlflow
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


_load_builtins()

__all__ = ["PLUGINS", "register_plugin", "Plugin", "PluginContext"]

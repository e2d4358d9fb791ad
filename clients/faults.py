"""Fault injection: clients that crash, die or send garbage.

Not an attack from the literature but the failure model every experiment
must survive: a client whose code raises, whose process dies mid-round (an
out-of-memory kill, a preempted node), or whose weights are non-finite (a
diverged or buggy client). The server must go on with the others and keep
the global model finite.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from fedsec.clients.base import Behaviour, ClientTask, register_behaviour

MODES = ("raise", "exit", "nan", "inf")


@register_behaviour("fault")
@dataclass(frozen=True, kw_only=True)
class Fault(Behaviour):
    """Fault injection after local training: raise, kill the process, or send NaN/inf."""

    mode: str = "raise"
    """raise: exception in training; exit: the client's process dies (os._exit);
    nan / inf: the submitted weights contain NaN / inf."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: got {self.mode!r}, expected one of {MODES}")

    def finalize(self, task: ClientTask) -> None:
        mode = self.mode
        if mode == "raise":
            raise RuntimeError(f"injected fault in partition {task.partition_id}")
        if mode == "exit":
            os._exit(17)
        with torch.no_grad():
            next(task.model.parameters()).view(-1)[0] = float("nan") if mode == "nan" else float("inf")

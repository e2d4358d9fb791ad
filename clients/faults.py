"""Fault injection: clients that crash, die or send garbage.

Not an attack from the literature but the failure model every experiment
must survive: a client whose code raises, whose process dies mid-round (an
out-of-memory kill, a preempted node), or whose weights are non-finite (a
diverged or buggy client). The server must go on with the others and keep
the global model finite.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from fedsec.clients.base import Behaviour, ClientTask, register_behaviour

MODES = ("raise", "exit", "nan", "inf", "huge", "shape", "dtype", "missing", "extra", "zero_examples",
         "slow")


@register_behaviour("fault")
@dataclass(frozen=True, kw_only=True)
class Fault(Behaviour):
    """Fault injection after local training: raise, kill the process, or send NaN/inf."""

    mode: str = "raise"
    """raise: exception in training; exit: the client's process dies (os._exit);
    nan / inf: the submitted weights contain NaN / inf; huge: every weight is 1e30
    (finite, so only a robust rule keeps it out); shape: the first tensor has one element
    too few; dtype: the first tensor is float64; missing: the first tensor is absent;
    extra: an unexpected tensor is added; zero_examples: the reply claims 0 examples;
    slow: a straggler, whose honest reply comes ``seconds`` late (timeouts, a node lost
    mid-round)."""
    seconds: float = 1.0
    """Delay of mode ``slow``, in seconds of wall-clock time."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: got {self.mode!r}, expected one of {MODES}")
        if not (isinstance(self.seconds, (int, float)) and 0 <= self.seconds < float("inf")):
            raise ValueError(f"seconds: got {self.seconds!r}, expected a finite number >= 0")

    def finalize(self, task: ClientTask) -> None:
        mode = self.mode
        if mode == "raise":
            raise RuntimeError(f"injected fault in partition {task.partition_id}")
        if mode == "exit":
            os._exit(17)
        if mode == "slow":
            time.sleep(self.seconds)
            return
        module, name = _first_parameter(task.model)
        with torch.no_grad():
            p = getattr(module, name)
            if mode in ("nan", "inf"):
                p.view(-1)[0] = float("nan") if mode == "nan" else float("inf")
            elif mode == "huge":
                for q in task.model.parameters():
                    q.fill_(1e30)
            elif mode == "shape":
                module._parameters[name] = torch.nn.Parameter(p.reshape(-1)[:-1].clone())
            elif mode == "dtype":
                module._parameters[name] = torch.nn.Parameter(p.double())
            elif mode == "missing":
                module._parameters[name] = None  # a None parameter is left out of state_dict
            elif mode == "extra":
                task.model.register_buffer("injected_extra", torch.zeros(3))
            elif mode == "zero_examples":
                task.data = task.data.subset(torch.arange(0))


def _first_parameter(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                return module, name
    raise ValueError("the model has no parameters to corrupt")

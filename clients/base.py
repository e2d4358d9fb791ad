"""Client behaviours: one honest training loop, attacks as hooks around it.

A behaviour is a class registered by name whose hooks wrap
:func:`clients.training.local_train` the way Flower's client mods wrap a
ClientApp: poison the data, poison each batch, replace the loss, perturb the
trained weights, or (omniscient attacks) rewrite the attackers' rows of the
server's update matrix before aggregation. The honest behaviour is the base
class with no hook overridden. Behaviours never learn which aggregation rule
the server runs.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedsec.data import TensorData
from fedsec.metrics import EvalTrigger
from fedsec.registry import Registry

BEHAVIOURS: Registry = Registry("client behaviour")


def register_behaviour(name: str):
    """Register a :class:`Behaviour` subclass under ``name`` (sets ``cls.name``)."""
    inner = BEHAVIOURS.register(name)

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Behaviour)):
            raise TypeError(f"behaviour {name!r} must be a subclass of clients.Behaviour")
        cls.name = name
        return inner(cls)

    return deco


def get_behaviour(name: str, **params: Any) -> Behaviour:
    return BEHAVIOURS.get(name).from_params(params)


@dataclass(frozen=True, kw_only=True)
class NoParams:
    pass


@dataclass(frozen=True, kw_only=True)
class ClientContext:
    """What a behaviour may know about its situation in one round.

    ``coalition`` lists the partition ids that share this attack entry (sorted),
    so colluding attackers can split work (DBA) deterministically;
    ``global_state`` is the global model received this round (G^t);
    ``num_sampled`` is n, the number of clients the server sampled this round.
    """

    partition_id: int
    server_round: int
    num_clients: int
    num_sampled: int
    num_classes: int
    in_shape: tuple[int, int, int]
    coalition: tuple[int, ...]
    generator: torch.Generator
    device: torch.device
    global_state: dict[str, torch.Tensor]
    server_lr: float = 1.0


class Behaviour:
    """Honest by default; attacks override hooks.

    Subclasses set ``Params`` to a frozen keyword-only dataclass of their
    hyperparameters (validated in its ``__post_init__``).
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    omniscient: ClassVar[bool] = False
    """True when :meth:`server_stage` simulates a colluding adversary that sees the
    honest updates of the round (ALIE, IPM, MinMax): it runs on the server
    between receiving and aggregating, touching only the attackers' rows."""

    def __init__(self, params: Any = None) -> None:
        self.params = params if params is not None else self.Params()

    @classmethod
    def from_params(cls, raw: dict[str, Any] | None) -> Behaviour:
        raw = dict(raw or {})
        names = [f.name for f in dataclasses.fields(cls.Params)]
        for k in raw:
            if k not in names:
                close = difflib.get_close_matches(k, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TypeError(
                    f"{cls.name or cls.__name__}: unknown parameter {k!r}{hint}; "
                    f"valid: {', '.join(names) or 'none'}"
                )
        return cls(cls.Params(**raw))

    # -- client-side hooks (run inside the ClientApp) --------------------------------------
    def poison_data(self, data: TensorData, ctx: ClientContext) -> TensorData:
        """The local dataset the loop trains on (data poisoning: BadNets, label flip)."""
        return data

    def poison_batch(
        self, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each mini-batch before the forward pass (per-batch poisoning, DBA)."""
        return x, y

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: ClientContext) -> torch.Tensor:
        """The training objective (code poisoning replaces it)."""
        return F.cross_entropy(model(x), y)

    def after_train(self, model: nn.Module, ctx: ClientContext) -> dict[str, float]:
        """Perturb the trained weights in place (model replacement, sign flip, bit flip);
        returns extra metrics to report (e.g. number of flipped bits)."""
        return {}

    # -- server side -------------------------------------------------------------------------
    def server_stage(
        self, U: torch.Tensor, attackers: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Omniscient stage: return U (n, d) with the rows where ``attackers`` (n,) is True
        replaced. Must not modify U in place."""
        return U

    def eval_triggers(self, coalition: tuple[int, ...]) -> dict[str, EvalTrigger]:
        """Triggers whose attack success rate the server measures each round."""
        return {}


@register_behaviour("honest")
class Honest(Behaviour):
    """Plain local SGD on the client's own partition."""

"""Client behaviours: one honest training loop, attacks as stages around it.

A behaviour is a stateless frozen keyword-only dataclass registered by name
(its fields are its hyperparameters, validated in ``__post_init__``). One
client call is a :class:`ClientTask`: the client's data, the received global
state, the model being trained, its generator and its situation in the round.
:func:`fedsec.clients.training.local_train` runs the honest loop and calls the
behaviour's stages in this order, the way Flower's client mods wrap a ClientApp:

==================  =======================================================================
stage               what it is for
==================  =======================================================================
``prepare``         once, before training: replace ``task.data`` (data poisoning: BadNets
                    ``per="dataset"``, label flip, feature collision), look at the model,
                    put what later stages need in ``task.state``
``poison_batch``    every mini-batch before the forward pass (BadNets, DBA)
``loss``            the training objective (code poisoning, feature collision)
``on_gradients``    after ``backward``, before the optimiser step: edit ``p.grad`` of
                    ``task.model`` (gradient masking/projection, e.g. Neurotoxin)
``finalize``        once, after training: turn the trained model into the submitted one,
                    in place on ``task.model`` (model replacement, sign flip, bit flips,
                    faults); figures to report go into ``task.metrics``
==================  =======================================================================

Everything an attack carries from one stage to the next lives on the task
(``task.state``), never on the behaviour, so one behaviour object serves every
client and every round. :meth:`Behaviour.overridden_stages` tells an engine
which stages a behaviour replaces; behaviours that override only ``prepare``
(data-level, never touching the model) and ``poison_batch`` are
:meth:`~Behaviour.vectorizable`: plain SGD on (possibly poisoned) data.

Colluding omniscient attacks (ALIE, IPM, Min-Max, ...) are :class:`Colluding`
behaviours: their clients train honestly, and the server calls
:meth:`Colluding.craft` with the round's update matrix, the mask of this
attack's rows, a generator and the server's aggregation rule (passed in, so an
adaptive attack never imports ``fedsec.strategies``).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedsec.data import TensorData
from fedsec.metrics import EvalTrigger
from fedsec.registry import Registry

BEHAVIOURS: Registry = Registry("client behaviour")
# The sanitizing client runs a data detector (sklearn): imported on first use, not at import.
BEHAVIOURS.register_lazy("sanitizing", "fedsec.audit.sanitizing:Sanitizing")

STAGES = ("prepare", "poison_batch", "loss", "on_gradients", "finalize")
DATA_STAGES = frozenset({"prepare", "poison_batch"})
"""Stages that leave the optimisation plain SGD; see :meth:`Behaviour.vectorizable`."""


def register_behaviour(name: str):
    """Register a :class:`Behaviour` subclass under ``name`` (sets ``cls.name``)."""
    inner = BEHAVIOURS.register(name)

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Behaviour)):
            raise TypeError(f"behaviour {name!r} must be a subclass of fedsec.clients.Behaviour")
        if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
            raise TypeError(f"behaviour {name!r} must be a @dataclass(frozen=True, kw_only=True)")
        cls.name = name
        return inner(cls)

    return deco


def get_behaviour(name: str, **params: Any) -> Behaviour:
    return BEHAVIOURS.get(name).from_params(params)


@dataclass(kw_only=True, eq=False)
class TrainConfig:
    """The honest loop's hyperparameters (``[client]`` of the scenario)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass(kw_only=True, eq=False)
class ClientTask:
    """One client call: what a behaviour may see and change in one round.

    ``coalition`` lists the partition ids that share this attack entry (sorted),
    so colluding attackers can split work (DBA) deterministically;
    ``global_state`` is G^t, the global model received this round (on
    ``device``; read it, never write it); ``model`` is the model being trained
    (initialised to G^t); ``data`` is the local partition (``prepare`` may
    replace it; its length is the ``num-examples`` reported); ``num_sampled``
    is n, the number of clients the server sampled this round; ``generator``
    draws every random choice of this call (seeded from (seed, round,
    partition id)); ``state`` is scratch space an attack carries across
    stages; ``metrics`` are extra figures sent with the reply.
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
    global_state: Mapping[str, torch.Tensor]
    model: nn.Module
    data: TensorData
    config: TrainConfig
    server_lr: float = 1.0
    state: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


# Kept as a name for code written against the old hook API: the task carries every
# field the old context had.
ClientContext = ClientTask


@dataclass(frozen=True, kw_only=True)
class Behaviour:
    """Honest by default; attacks override stages (see the module docstring).

    Subclasses are ``@dataclass(frozen=True, kw_only=True)`` whose fields are
    their hyperparameters, validated in ``__post_init__`` with errors naming
    the parameter and its value.
    """

    name: ClassVar[str] = ""
    omniscient: ClassVar[bool] = False
    """True for :class:`Colluding` attacks (the server runs their ``craft``)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Behaviour:
        if args:
            raise TypeError(f"{cls.__name__} takes keyword arguments only, got {len(args)} positional")
        valid = [f.name for f in dataclasses.fields(cls) if f.init]
        for k in kwargs:
            if k not in valid:
                close = difflib.get_close_matches(k, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise TypeError(f"{cls.name or cls.__name__}: unknown parameter {k!r}{hint}; "
                                f"valid: {', '.join(valid) or 'none'}")
        return super().__new__(cls)

    @classmethod
    def from_params(cls, raw: Mapping[str, Any] | None) -> Behaviour:
        return cls(**dict(raw or {}))

    @property
    def params(self) -> Behaviour:
        """The hyperparameters (the behaviour itself: it holds nothing else)."""
        return self

    # -- what an engine needs to know ----------------------------------------------------
    @classmethod
    def overridden_stages(cls) -> frozenset[str]:
        return frozenset(s for s in STAGES if getattr(cls, s) is not getattr(Behaviour, s))

    @classmethod
    def vectorizable(cls) -> bool:
        """Plain SGD on data the behaviour may poison: training can be batched across clients.

        A behaviour whose ``prepare`` does more than replace ``task.data`` (reads the
        model, writes ``task.state`` for a later stage that is not data-level) sets
        ``vectorizable`` to a function returning False.
        """
        return cls.overridden_stages() <= DATA_STAGES

    # -- client-side stages (run inside the ClientApp) -------------------------------------
    def prepare(self, task: ClientTask) -> None:
        """Before training; may replace ``task.data`` and fill ``task.state``."""

    def poison_batch(
        self, x: torch.Tensor, y: torch.Tensor, task: ClientTask
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each mini-batch (B, C, H, W), (B,) before the forward pass; returns new tensors."""
        return x, y

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: ClientTask) -> torch.Tensor:
        """The training objective on one batch (a scalar)."""
        return F.cross_entropy(model(x), y)

    def on_gradients(self, task: ClientTask) -> None:
        """After ``backward``, before the step: may edit ``p.grad`` of ``task.model``."""

    def finalize(self, task: ClientTask) -> None:
        """After training: make ``task.model`` the submitted model; report in ``task.metrics``."""

    def eval_triggers(self, coalition: tuple[int, ...]) -> dict[str, EvalTrigger]:
        """Triggers whose attack success rate the server measures each round."""
        return {}


Rule = Callable[..., Any]
"""The server's aggregation rule as passed to :meth:`Colluding.craft`: ``rule(U,
weights=None, generator=None)`` returns an object with ``vector`` (d,),
``accepted`` (n,) bool and ``scores`` (n,) or None."""


@dataclass(frozen=True, kw_only=True)
class Colluding(Behaviour):
    """A colluding omniscient adversary: its clients train honestly, the server crafts.

    The federation calls :meth:`craft` after forming the round's update matrix
    and before the rule, once per active attack entry.
    """

    omniscient: ClassVar[bool] = True

    def craft(
        self,
        U: torch.Tensor,
        malicious: torch.Tensor,
        generator: torch.Generator,
        rule: Rule | None = None,
    ) -> torch.Tensor:
        """Return U (n, d) with the rows where ``malicious`` (n,) bool is True replaced.

        U holds every sampled client's update (client minus global, float32);
        ``rule`` is the server's aggregator (for adaptive attacks). Must not
        modify U in place and must return U's shape, dtype and device.
        """
        raise NotImplementedError


@register_behaviour("honest")
@dataclass(frozen=True, kw_only=True)
class Honest(Behaviour):
    """Plain local SGD on the client's own partition."""


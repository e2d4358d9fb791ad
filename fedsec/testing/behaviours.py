"""Conformance checks for client behaviours: plain functions with asserts, no pytest.

The project runs them over its own registry (tests/clients/test_behaviour_registry.py);
a user checks a behaviour of their own the same way::

    check_behaviour(MyAttack, {"strength": 2.0})

Each function raises ``AssertionError`` naming the behaviour and what it broke.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import namedtuple
from collections.abc import Callable, Mapping
from typing import Any

import torch

from fedsec.clients import BEHAVIOURS, Behaviour, ClientTask, Colluding, TrainConfig, local_train
from fedsec.clients.base import STAGES
from fedsec.data import TensorData, load_dataset
from fedsec.metrics import EvalTrigger
from fedsec.models import build_model

TaskFactory = Callable[[int], ClientTask]
"""seed -> a fresh ClientTask (new model, data and generator each call)."""

OPTIMISATION_STAGES = frozenset({"loss", "on_gradients"})
"""Stages that change the optimisation itself: a behaviour overriding one is never vectorizable."""


def _label(cls: type) -> str:
    return getattr(cls, "name", "") or cls.__name__


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN == NaN when the bits agree), dtype and shape included."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.detach().cpu().reshape(-1), b.detach().cpu().reshape(-1)
    return a.view(torch.uint8).numpy().tobytes() == b.view(torch.uint8).numpy().tobytes()


def _snapshot(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _states_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(_same_bits(a[k], b[k]) for k in a)


# -- declaration ---------------------------------------------------------------------------------
def check_declaration(cls: type, params: Mapping[str, Any] | None = None) -> Behaviour:
    """The class is a stateless frozen keyword-only dataclass that validates its parameters.

    Builds ``cls(**params)`` (defaults when ``params`` is None) and returns it.
    """
    name = _label(cls)
    params = dict(params or {})
    assert isinstance(cls, type) and issubclass(cls, Behaviour), f"{name}: not a Behaviour subclass"
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, \
        f"{name}: must be a @dataclass(frozen=True, kw_only=True)"
    fields = dataclasses.fields(cls)
    positional = [f.name for f in fields if f.init and not f.kw_only]
    assert not positional, f"{name}: fields {positional} are not keyword-only"
    field_names = {f.name for f in fields}

    b = cls(**params)
    assert b.params is b, f"{name}: .params must be the behaviour itself"
    extra = set(vars(b)) - field_names
    assert not extra, f"{name}: instance attributes {sorted(extra)} are not fields (state on self)"
    if fields:
        try:
            setattr(b, fields[0].name, getattr(b, fields[0].name))
        except dataclasses.FrozenInstanceError:
            pass
        else:
            raise AssertionError(f"{name}: setting a field did not raise FrozenInstanceError")
    try:
        cls(**params, no_such_param=1)
    except TypeError as e:
        assert "no_such_param" in str(e), f"{name}: unknown-parameter error does not name it: {e}"
    else:
        raise AssertionError(f"{name}: an unknown parameter was accepted")
    if fields:
        try:
            cls(getattr(b, fields[0].name))
        except TypeError:
            pass
        else:
            raise AssertionError(f"{name}: a positional argument was accepted")
    if cls.name:
        assert BEHAVIOURS.get(cls.name) is cls, f"{name}: registered name does not lead back to the class"

    stages = cls.overridden_stages()
    assert isinstance(stages, frozenset) and stages <= set(STAGES), \
        f"{name}: overridden_stages() {sorted(stages)} not a subset of {STAGES}"
    vec = cls.vectorizable()
    assert isinstance(vec, bool), f"{name}: vectorizable() must return a bool, got {vec!r}"
    if stages & OPTIMISATION_STAGES:
        assert not vec, f"{name}: overrides {sorted(stages & OPTIMISATION_STAGES)} but claims vectorizable"
    # the protocol flag must stay a class-level bool (a field of the same name would shadow it)
    flag = inspect.getattr_static(cls, "omniscient")
    assert "omniscient" not in field_names and isinstance(flag, bool), \
        f"{name}: 'omniscient' must stay a class-level bool, not a field"
    assert flag == issubclass(cls, Colluding), f"{name}: omniscient={flag} but Colluding={issubclass(cls, Colluding)}"

    triggers = b.eval_triggers((0, 1))
    assert isinstance(triggers, dict) and all(
        isinstance(k, str) and isinstance(v, EvalTrigger) for k, v in triggers.items()
    ), f"{name}: eval_triggers must return dict[str, EvalTrigger], got {triggers!r}"
    return b


# -- client side ---------------------------------------------------------------------------------
def digits_task_factory(
    *, n: int = 64, model: str = "cnn", model_params: Mapping[str, Any] | None = None,
    epochs: int = 1, batch_size: int = 16, lr: float = 0.05, momentum: float = 0.9,
    partition_id: int = 0, coalition: tuple[int, ...] = (0, 1), num_sampled: int = 4,
) -> TaskFactory:
    """ClientTasks on the first ``n`` bundled digits (1x8x8, 10 classes) and a tiny model.

    The model's initial weights are fixed (drawn once under a forked RNG), so
    two tasks from one factory differ only by the generator seed.
    """
    splits = load_dataset("digits")
    data = splits.train.subset(torch.arange(n))
    mp = dict(model_params or ({"width": 4, "hidden": 16} if model == "cnn" else {"hidden": 16}))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        init = build_model(model, in_shape=splits.in_shape, num_classes=splits.num_classes, **mp).state_dict()
    init = _snapshot(init)

    def make(seed: int) -> ClientTask:
        net = build_model(model, in_shape=splits.in_shape, num_classes=splits.num_classes, **mp)
        net.load_state_dict(init)
        return ClientTask(
            partition_id=partition_id, server_round=1, num_clients=max(coalition) + 1,
            num_sampled=num_sampled, num_classes=splits.num_classes, in_shape=splits.in_shape,
            coalition=coalition, generator=torch.Generator().manual_seed(seed), device=torch.device("cpu"),
            global_state=_snapshot(init), model=net, data=TensorData(data.x.clone(), data.y.clone()),
            config=TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum),
        )

    return make


def check_client_stages(b: Behaviour, make_task: TaskFactory, seed: int = 3) -> None:
    """``local_train`` is deterministic under a seed and leaves its inputs alone.

    Runs the same behaviour object twice on fresh tasks with the same seed:
    the submitted models and the reported figures must be bitwise equal (so
    nothing carries over on the behaviour between calls), ``task.global_state``
    and the caller's data unchanged, the model's keys, shapes and dtypes kept,
    the behaviour's attributes not rebound.
    """
    name = _label(type(b))
    attrs = dict(vars(b))
    runs = []
    for _ in range(2):
        task = make_task(seed)
        g0 = _snapshot(task.global_state)
        data0 = task.data
        x0, y0 = data0.x.clone(), data0.y.clone()
        shapes = {k: (v.shape, v.dtype) for k, v in task.model.state_dict().items()}
        stats = local_train(b, task)
        assert _states_equal(task.global_state, g0), f"{name}: task.global_state was modified"
        assert _same_bits(data0.x, x0) and _same_bits(data0.y, y0), f"{name}: the caller's data was modified"
        state = _snapshot(task.model.state_dict())
        assert {k: (v.shape, v.dtype) for k, v in state.items()} == shapes, \
            f"{name}: the model's keys, shapes or dtypes changed"
        assert isinstance(stats, dict) and all(isinstance(k, str) and isinstance(v, float) for k, v in stats.items()), \
            f"{name}: local_train must report str -> float, got {stats!r}"
        assert stats["num-examples"] == float(len(task.data)), f"{name}: num-examples != len(task.data)"
        runs.append((state, stats))
    (s1, m1), (s2, m2) = runs
    assert _states_equal(s1, s2), f"{name}: two runs with the same generator seed submit different models"
    assert repr(m1) == repr(m2), f"{name}: two runs with the same generator seed report {m1} vs {m2}"
    assert set(vars(b)) == set(attrs) and all(vars(b)[k] is attrs[k] for k in attrs), \
        f"{name}: the behaviour's attributes changed during training"


# -- server side (colluding attacks) --------------------------------------------------------------
_RuleOut = namedtuple("_RuleOut", ["vector", "accepted", "scores"])


def _mean_rule(U: torch.Tensor, weights: torch.Tensor | None = None, generator: torch.Generator | None = None):
    """A stand-in for the server's rule (passed to ``craft`` as ``rule``)."""
    return _RuleOut(U.mean(0), torch.ones(len(U), dtype=torch.bool, device=U.device), None)


def check_craft(b: Colluding, *, n: int = 8, d: int = 24, rows: tuple[int, ...] = (1, 4)) -> None:
    """``craft`` keeps shape, dtype and device, changes only malicious rows, never U in place.

    Checked in float32 and float64, on the CPU and (if present) on CUDA, with
    and without a ``rule``, for two colluders and for one; the same generator
    seed must give the bitwise-same result and finite input a finite output.
    An attack whose class sets ``needs_rule = True`` (adaptive by definition) is
    checked with a rule only, and must raise ValueError naming ``rule`` without one.
    """
    name = _label(type(b))
    assert type(b).craft is not Colluding.craft, f"{name}: a Colluding behaviour must implement craft"
    needs_rule = bool(getattr(type(b), "needs_rule", False))
    if needs_rule:
        U0, m0 = torch.randn(n, d, generator=torch.Generator().manual_seed(0)), torch.zeros(n, dtype=torch.bool)
        m0[list(rows)] = True
        try:
            b.craft(U0, m0, torch.Generator().manual_seed(7), rule=None)
        except ValueError as e:
            assert "rule" in str(e), f"{name}: the error without a rule does not name 'rule': {e}"
        else:
            raise AssertionError(f"{name}: needs_rule = True but craft accepted rule=None")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float32, torch.float64):
            for mal_rows in (rows, rows[:1]):
                g = torch.Generator().manual_seed(0)
                U = (torch.randn(n, d, generator=g) + 0.3).to(device=device, dtype=dtype)
                mask = torch.zeros(n, dtype=torch.bool, device=device)
                mask[list(mal_rows)] = True
                for rule in ((_mean_rule,) if needs_rule else (None, _mean_rule)):
                    before = U.clone()
                    out = b.craft(U, mask, torch.Generator().manual_seed(7), rule=rule)
                    where = f"{name} ({device}, {dtype}, malicious rows {list(mal_rows)}, rule={rule is not None})"
                    assert _same_bits(U, before), f"{where}: U was modified in place"
                    assert isinstance(out, torch.Tensor) and out.shape == U.shape, f"{where}: shape changed"
                    assert out.dtype == U.dtype and out.device == U.device, f"{where}: dtype/device changed"
                    assert out.data_ptr() != U.data_ptr(), f"{where}: returned U's storage (in-place risk)"
                    assert _same_bits(out[~mask], U[~mask]), f"{where}: an honest row changed"
                    assert bool(torch.isfinite(out).all()), f"{where}: non-finite output for finite input"
                    again = b.craft(U, mask, torch.Generator().manual_seed(7), rule=rule)
                    assert _same_bits(out, again), f"{where}: not deterministic under the same seed"


def check_behaviour(cls: type, params: Mapping[str, Any] | None = None, *,
                    make_task: TaskFactory | None = None, train: bool = True) -> None:
    """Every check that applies to ``cls`` built with ``params`` (see the functions above).

    ``make_task`` defaults to :func:`digits_task_factory`; ``train=False``
    skips the training run (behaviours whose training is meant to fail).
    """
    b = check_declaration(cls, params)
    if train:
        check_client_stages(b, make_task or digits_task_factory())
    if isinstance(b, Colluding):
        check_craft(b)

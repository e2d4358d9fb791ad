"""Conformance checks for server plugins: plain asserts, no pytest.

    from fedsec.testing import check_plugin
    check_plugin(MyPlugin, {"floor": 0.4})

A plugin sees only what a server has (the global model, the scenario, a clean
held-out set); the check runs its hooks on a tiny digits model in a temporary
run directory, twice, and asserts they agree.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def _label(cls: type) -> str:
    return getattr(cls, "name", "") or cls.__name__


def tiny_context(run_dir: Path, *, seed: int = 0, n_test: int = 120):
    """A PluginContext over the first ``n_test`` bundled digits and a small cnn scenario."""
    from fedsec.federation.env import new_model
    from fedsec.plugins import PluginContext
    from fedsec.scenario import Scenario

    s = Scenario.from_dict({"name": "plugin-check", "data": {"num_clients": 2},
                            "model": {"name": "cnn"}, "run": {"seed": seed, "engine": "inline"}})
    from fedsec.data import load_dataset

    data = load_dataset("digits")
    test = data.test.subset(torch.arange(min(n_test, len(data.test))))
    ctx = PluginContext(scenario=s, test=test, num_classes=data.num_classes, in_shape=data.in_shape,
                        run_dir=run_dir, device=torch.device("cpu"),
                        make_model=lambda: new_model(s, "plugin"), eval_triggers={})
    return s, ctx


def _jsonable(x: Any) -> bool:
    try:
        json.dumps(x, allow_nan=True)
        return True
    except (TypeError, ValueError):
        return False


def _strip_times(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip_times(v) for k, v in x.items() if "second" not in k and "time" not in k}
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    return x


def check_plugin(cls: type, params: Mapping[str, Any] | None = None, *, rounds: int = 2,
                 run_hooks: bool = True) -> None:
    """Construction, parameter errors, and (``run_hooks``) its hooks on a tiny model.

    ``on_round_end`` must return None or a model with the global model's keys,
    shapes and dtypes; ``on_run_end`` a JSON-serialisable dict; round metrics
    JSON-serialisable; two runs from the same seed the same figures (wall-clock
    fields ignored).
    """
    from fedsec.federation.env import new_model
    from fedsec.plugins import PLUGINS

    name = _label(cls)
    params = dict(params or {})
    cls(**params)
    try:
        cls(**params, no_such_param=1)
    except (TypeError, ValueError) as e:
        assert "no_such_param" in str(e), f"{name}: the unknown-parameter error does not name it: {e}"
    else:
        raise AssertionError(f"{name}: an unknown parameter was accepted")
    if getattr(cls, "name", "") and cls.name in PLUGINS:
        assert PLUGINS.get(cls.name) is cls, f"{name}: its registered name leads to another class"
    if not run_hooks:
        return
    results = []
    for _ in range(2):
        with tempfile.TemporaryDirectory() as tmp:
            s, ctx = tiny_context(Path(tmp))
            plugin = cls(**params)
            model = new_model(s)
            ref = {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}
            per_round = []
            for rnd in range(1, rounds + 1):
                ctx.round_metrics = {}
                out = plugin.on_round_end(rnd, model, ctx)
                if out is not None:
                    assert isinstance(out, torch.nn.Module), f"{name}: on_round_end returned {type(out).__name__}"
                    got = {k: (v.shape, v.dtype) for k, v in out.state_dict().items()}
                    assert got == ref, f"{name}: on_round_end returned a model of another architecture"
                    model = out
                assert _jsonable(ctx.round_metrics), f"{name}: round_metrics are not JSON-serialisable"
                per_round.append(dict(ctx.round_metrics))
            figures = plugin.on_run_end(model, ctx)
            assert isinstance(figures, dict), f"{name}: on_run_end must return a dict, got {type(figures).__name__}"
            assert _jsonable(figures), f"{name}: on_run_end's figures are not JSON-serialisable"
            results.append(_strip_times({"rounds": per_round, "figures": figures}))
    assert results[0] == results[1], f"{name}: two runs with the same seed gave different figures"

"""Conformance checks for aggregation rules and pre-aggregators: plain asserts, no pytest.

    from fedsec.testing import check_aggregator
    check_aggregator(MyRule, {"tau": 2.0})

The project runs the same checks over its own registry (tests/test_conformance.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

N, D = 12, 7


def _label(cls: type) -> str:
    return getattr(cls, "name", "") or cls.__name__


def _u(n: int, d: int, seed: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g) + 0.2).to(device=device, dtype=dtype)


def _gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _call(rule: Any, U: torch.Tensor, *, weights=None, generator=None):
    extra = {}
    if getattr(rule, "needs_reference", False):
        extra["reference"] = torch.nan_to_num(U.float(), nan=0.0, posinf=0.0, neginf=0.0).mean(0) + 0.05
    return rule(U, weights=weights, generator=generator, **extra)


def check_declaration(cls: type, params: Mapping[str, Any] | None = None) -> Any:
    """A frozen keyword-only dataclass; unknown and positional arguments are errors."""
    name = _label(cls)
    params = dict(params or {})
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, \
        f"{name}: must be a @dataclass(frozen=True, kw_only=True)"
    rule = cls(**params)
    try:
        cls(**params, no_such_param=1)
    except (TypeError, ValueError) as e:
        assert "no_such_param" in str(e), f"{name}: the unknown-parameter error does not name it: {e}"
    else:
        raise AssertionError(f"{name}: an unknown parameter was accepted")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if fields:
        try:
            cls(getattr(rule, fields[0].name))
        except TypeError:
            pass
        else:
            raise AssertionError(f"{name}: a positional argument was accepted")
    return rule


def check_aggregator(cls: type, params: Mapping[str, Any] | None = None, *, n: int = N, d: int = D) -> None:
    """Output contract, no in-place change, determinism, non-finite rows, dtypes and devices.

    Each check builds a fresh rule (stateful rules such as FoolsGold keep history
    between calls).
    """
    name = _label(cls)
    params = dict(params or {})
    check_declaration(cls, params)
    make = lambda: cls(**params)  # noqa: E731
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float32, torch.float64):
            U = _u(n, d, 1, device, dtype)
            before = U.clone()
            w = torch.arange(1, n + 1, device=device, dtype=dtype)
            for weights in (None, w):
                where = f"{name} ({device}, {dtype}, weights={'yes' if weights is not None else 'no'})"
                out = _call(make(), U, weights=weights, generator=_gen(1, device))
                assert torch.equal(U, before), f"{where}: U was modified in place"
                assert out.vector.shape == (d,), f"{where}: vector shape {tuple(out.vector.shape)} != ({d},)"
                assert out.vector.dtype == torch.float32, f"{where}: vector dtype {out.vector.dtype} != float32"
                assert out.vector.device == U.device, f"{where}: vector on {out.vector.device}, U on {U.device}"
                assert bool(torch.isfinite(out.vector).all()), f"{where}: non-finite output for finite input"
                assert out.accepted.shape == (n,) and out.accepted.dtype == torch.bool, \
                    f"{where}: accepted must be a ({n},) bool tensor"
                assert out.scores is None or (out.scores.shape == (n,) and out.scores.device == U.device), \
                    f"{where}: scores must be None or ({n},) on U's device"
            a = _call(make(), U, generator=_gen(5, device))
            b = _call(make(), U, generator=_gen(5, device))
            assert torch.equal(a.vector, b.vector) and torch.equal(a.accepted, b.accepted), \
                f"{name} ({device}, {dtype}): not deterministic under the same generator seed"
    for bad in (float("nan"), float("inf")):
        U = _u(n + 1, d, 4)
        U[5, 2] = bad
        out = _call(make(), U, generator=_gen(2))
        assert not bool(out.accepted[5]), f"{name}: a row holding {bad} was accepted"
        assert bool(torch.isfinite(out.vector).all()), f"{name}: a row holding {bad} reached the output"
        if out.scores is not None:
            assert out.scores[5] == float("inf"), f"{name}: a non-finite row must score +inf"


def check_pre_aggregator(cls: type, params: Mapping[str, Any] | None = None, *, n: int = N, d: int = D) -> None:
    """A pre-aggregator maps U (n, d) to finite rows without touching U, deterministically."""
    name = _label(cls)
    params = dict(params or {})
    check_declaration(cls, params)
    U = _u(n, d, 1)
    before = U.clone()
    out = cls(**params)(U, generator=_gen(3))
    again = cls(**params)(U, generator=_gen(3))
    assert torch.equal(U, before), f"{name}: U was modified in place"
    rows = out[0] if isinstance(out, tuple) else getattr(out, "U", getattr(out, "updates", None))
    rows2 = again[0] if isinstance(again, tuple) else getattr(again, "U", getattr(again, "updates", None))
    assert isinstance(rows, torch.Tensor) and rows.ndim == 2 and rows.shape[1] == d, \
        f"{name}: must return an (n', {d}) matrix first"
    assert bool(torch.isfinite(rows).all()), f"{name}: non-finite output for finite input"
    assert torch.equal(rows, rows2), f"{name}: not deterministic under the same generator seed"

"""Scenario errors, and the collector that reports every problem of a scenario at once."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
from collections.abc import Iterator
from typing import Any


class ScenarioError(ValueError):
    """One or more scenario fields are invalid; each message starts with its dotted path.

    ``errors`` lists every problem found (a scenario is checked whole, so two
    typos are reported together).
    """

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        self.errors = list(errors) if errors else [message]
        super().__init__(message)

    @classmethod
    def of(cls, errors: list[str]) -> ScenarioError:
        if len(errors) == 1:
            return cls(errors[0])
        return cls(f"{len(errors)} problems in the scenario:\n" + "\n".join(f"  - {e}" for e in errors),
                   errors)


# While a scenario is validated, problems are collected here instead of raised one at a time.
_collector: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("fedsec_scenario_errors",
                                                                              default=None)


@contextlib.contextmanager
def collecting_errors() -> Iterator[list[str]]:
    """Collect every :func:`_report`-ed problem of the block; raise them together at its end."""
    if _collector.get() is not None:  # nested: the outermost block raises
        yield _collector.get()  # type: ignore[misc]
        return
    errors: list[str] = []
    token = _collector.set(errors)
    try:
        yield errors
    finally:
        _collector.reset(token)
    if errors:
        raise ScenarioError.of(list(dict.fromkeys(errors)))


def _report(message: str) -> None:
    errors = _collector.get()
    if errors is None:
        raise ScenarioError(message)
    errors.append(message)


def _check(cond: bool, path: str, value: Any, expected: str) -> bool:
    """Report ``path`` unless ``cond``; returns ``cond`` so dependent checks can be skipped."""
    if not cond:
        _report(f"{path}: got {value!r}, expected {expected}")
    return bool(cond)


def _check_name(name: str, registry: Any, path: str) -> bool:
    """A registry name, with a did-you-mean for near misses."""
    if name in registry:
        return True
    valid = registry.names()
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    _report(f"{path}: got {name!r}, expected one of {valid}{hint}")
    return False


def _require(cond: bool, path: str, value: Any, expected: str) -> None:
    # A value of the wrong type stops its field (nothing below it can be checked).
    if not cond:
        raise ScenarioError(f"{path}: got {value!r}, expected {expected}")


def _check_kwargs(fn: Any, params: dict[str, Any], path: str, skip: int = 0,
                  skip_names: tuple[str, ...] = ()) -> None:
    import inspect

    ps = list(inspect.signature(fn).parameters.values())[skip:]
    names = [p.name for p in ps if p.name not in skip_names]
    for k in params:
        if k not in names:
            close = difflib.get_close_matches(k, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            _report(f"{path}.{k}: unknown parameter{hint}; valid: {', '.join(names) or 'none'}")


def _build(make: Any, path: str) -> Any:
    try:
        return make()
    except ScenarioError as e:
        for msg in e.errors:
            _report(msg)
    except (TypeError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        _report(f"{path}: {msg}")
    return None

"""The one way components validate their parameters.

Every component (rule, pre-aggregator, behaviour, trigger, plugin, detector,
scenario section) is a frozen keyword-only dataclass that checks its fields in
``__post_init__``/``validate`` with :func:`check`, so every bad value reads the
same way, naming where it is, what it got and what was expected::

    krum.f: got -1, expected an integer >= 0

Scenario validation wraps these messages with the field path
(``server.aggregator_params: krum.f: got -1, ...``) and reports every problem
of a scenario at once.
"""

from __future__ import annotations

from typing import Any


def invalid(path: str, value: Any, expected: str) -> ValueError:
    """The error for ``path`` holding ``value`` where ``expected`` was expected."""
    return ValueError(f"{path}: got {value!r}, expected {expected}")


def check(cond: bool, path: str, value: Any, expected: str) -> None:
    """Raise :func:`invalid` unless ``cond``."""
    if not cond:
        raise invalid(path, value, expected)


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)

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


class KeywordOnly:
    """Base of the frozen keyword-only component dataclasses (rules, pre-aggregators).

    Refuses positional arguments and unknown keywords (naming them and the valid
    ones) before the dataclass's own ``__init__`` would raise a less helpful
    ``TypeError``, and runs :meth:`validate` after construction.
    """

    name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any):
        if args:
            raise TypeError(f"{cls.__name__} takes keyword arguments only, got {len(args)} positional")
        from dataclasses import fields

        valid = [f.name for f in fields(cls) if f.init]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise TypeError(
                f"{cls.__name__} ({cls.name!r}) got unknown hyperparameter(s) "
                f"{', '.join(map(repr, unknown))}; valid ones: {', '.join(valid) or '(none)'}"
            )
        return super().__new__(cls)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the hyperparameters; raise ValueError naming the bad one."""

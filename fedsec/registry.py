"""Name registries (timm/Opacus style) shared by every pluggable component.

``fedsec`` reaches user-extensible parts (datasets, models, partitioners,
aggregation rules, client behaviours, plugins) only through these, so a user
registers their own component from their own module without touching ours.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

ENTRY_POINT_GROUP = "fedsec.components"
_entry_points_loaded = False


def load_entry_points() -> None:
    """Import every module installed packages name in the ``fedsec.components`` group (once).

    A package makes its rules, behaviours and plugins available to every fedsec
    process by declaring, in its pyproject.toml::

        [project.entry-points."fedsec.components"]
        mypkg = "mypkg.attacks"
    """
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True  # before importing: an entry point may query a registry
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:
            raise ImportError(f"fedsec component entry point {ep.name!r} ({ep.value}) failed to "
                              f"import: {type(e).__name__}: {e}") from e


def import_components(modules: list[str] | tuple[str, ...], where: str = "run.imports") -> None:
    """Import user modules that register components (``run.imports``, ``--import``).

    Modules are looked up on ``sys.path``, with the working directory first, so
    a script's own package next to the scenario works in every process.
    """
    import sys
    from pathlib import Path

    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for i, name in enumerate(modules):
        if not isinstance(name, str) or not name:
            raise ImportError(f"{where}[{i}]: got {name!r}, expected a module name")
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ImportError(f"{where}[{i}]: cannot import {name!r}: {e}") from e


class Registry(Generic[T]):
    """A mapping ``name -> component`` that refuses duplicates and explains misses."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._lazy: dict[str, str] = {}

    def register_lazy(self, name: str, target: str) -> None:
        """Register ``name`` as ``"module:attribute"``, imported on first :meth:`get`.

        Lets a registry list names (and a scenario be validated) without importing
        heavy modules (the engines import Flower and Ray).
        """
        if name in self._items or name in self._lazy:
            raise ValueError(f"{self.kind} {name!r} is already registered; pick another name")
        self._lazy[name] = target

    def register(self, name: str) -> Callable[[T], T]:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")

        def deco(obj: T) -> T:
            target = f"{getattr(obj, '__module__', '')}:{getattr(obj, '__name__', '')}"
            if self._lazy.get(name) == target:
                del self._lazy[name]  # the lazy entry resolving to itself
            if name in self._items or name in self._lazy:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered (by {self._items[name]!r}); "
                    "pick another name"
                )
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items and name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            obj = getattr(importlib.import_module(module), attr)
            self._lazy.pop(name, None)
            self._items.setdefault(name, obj)
        if name not in self._items:
            load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(unknown_name_message(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        load_entry_points()
        return sorted({*self._items, *self._lazy})

    def __contains__(self, name: object) -> bool:
        if name in self._items or name in self._lazy:
            return True
        load_entry_points()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(k, self.get(k)) for k in self.names()]

    def as_dict(self) -> dict[str, T]:
        return dict(self.items())


def unknown_name_message(kind: str, name: object, valid: list[str]) -> str:
    msg = f"unknown {kind} {name!r}"
    close = difflib.get_close_matches(str(name), valid, n=1)
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    return msg + f"; valid names: {', '.join(valid) or '(none registered)'}"

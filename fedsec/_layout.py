"""Where ``fedsec.strategies`` and ``fedsec.clients`` come from.

The product card keeps the folders ``strategies/`` and ``clients/`` at the top
of the repository, but generic top-level import names collide with a user's own
``clients/`` package. So they are installed as ``fedsec.strategies`` and
``fedsec.clients`` (setuptools ``package-dir`` in pyproject.toml), and fedsec
only ever imports those names.

Two small import hooks keep the source tree working without an install step
(Flower's app bundle, a checkout on ``sys.path``):

* :class:`_SiblingFinder` maps ``fedsec.strategies`` / ``fedsec.clients`` to the
  folders beside ``fedsec/`` when nothing else provides them;
* :func:`alias_toplevel` lets the card's names ``import strategies`` /
  ``import clients`` (source tree only) return the very same module objects, so
  there is one registry whichever name a script uses.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path

SUBPACKAGES = ("strategies", "clients")
_ROOT = Path(__file__).resolve().parent.parent


class _SiblingFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if len(parts) != 2 or parts[0] != "fedsec" or parts[1] not in SUBPACKAGES:
            return None
        init = _ROOT / parts[1] / "__init__.py"
        if not init.is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, init, submodule_search_locations=[str(init.parent)]
        )


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``strategies.x`` -> the already-imported ``fedsec.strategies.x`` (same object)."""

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.split(".")[0]
        if top not in SUBPACKAGES or "." not in fullname:
            return None
        if sys.modules.get(top) is not sys.modules.get(f"fedsec.{top}"):
            return None  # a user's own package of that name: leave it alone
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return importlib.import_module(f"fedsec.{spec.name}")

    def exec_module(self, module) -> None:
        pass


def install_sibling_finder() -> None:
    if not any(isinstance(f, _SiblingFinder) for f in sys.meta_path):
        sys.meta_path.append(_SiblingFinder())


def alias_toplevel(name: str) -> None:
    """Called first thing by ``strategies/__init__.py`` and ``clients/__init__.py``."""
    if name not in SUBPACKAGES:
        return
    sys.modules[name] = importlib.import_module(f"fedsec.{name}")
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())

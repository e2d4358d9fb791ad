"""The ``fedsec`` logger, the CLI's ``--quiet`` / ``--verbose``, and third-party noise.

Library code logs through ``logging.getLogger("fedsec.<module>")`` and never prints;
it installs no handler, so a user's script decides what it sees (the standard library
convention). The ``fedsec`` command calls :func:`configure` once:

- ``--quiet``: the fedsec logger at WARNING, no per-round lines, only the result;
- default: INFO (what a run is doing, one line per round from the CLI);
- ``--verbose``: DEBUG, and the third-party warnings below are shown.

:data:`SILENCED` lists each per-run warning that Flower or Ray prints although nothing
is wrong, with why it is safe to hide; they are hidden unless ``--verbose``. Any other
warning still shows.
"""

from __future__ import annotations

import builtins
import logging
import sys
import warnings
from dataclasses import dataclass
from typing import TextIO

QUIET, NORMAL, VERBOSE = -1, 0, 1


@dataclass(frozen=True)
class Silenced:
    """One third-party message hidden by default: who emits it, how it is matched, why
    hiding it is safe."""

    source: str
    """``warnings:<Category>`` for a Python warning, ``logger:<name>`` for a log record."""
    match: str
    """A substring of the message."""
    why: str


SILENCED: tuple[Silenced, ...] = (
    Silenced(
        "warnings:FutureWarning", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO",
        "Ray announces (at every ray.init) that a future version will stop hiding GPUs from "
        "actors that ask for num_gpus=0. The pinned Ray still hides them, which is what fedsec "
        "wants (a CPU client must not touch a GPU); nothing here depends on the future default, "
        "and opting in (RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0) would instead expose every GPU to "
        "CPU-only clients."),
    Silenced(
        "logger:flwr", "The `run_simulation` function is deprecated",
        "Flower deprecates its Python run_simulation entry point in favour of `flwr run`. "
        "The `flower` engine calls it on purpose (the `flwr run .` path is supported "
        "separately, docs/flwr_run.md), and flwr is pinned (1.41.0), so it cannot disappear "
        "under a run."),
    Silenced(
        "logger:flwr", "fraction_evaluate is set to 0.0",
        "FedAvg warns that federated evaluation is off; fedsec evaluates the global model "
        "centrally on the server every round, so no client-side evaluation is wanted. "
        "(RobustStrategy already drops it while it builds FedAvg; kept here for strategies "
        "built elsewhere.)"),
)


class _DropKnown(logging.Filter):
    """Drops the log records :data:`SILENCED` names for one logger."""

    def __init__(self, texts: list[str]) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not any(t in msg for t in self.texts)


_FILTERS: dict[str, _DropKnown] = {}
_HANDLER_NAME = "fedsec-cli"


def silence_third_party(verbose: bool = False) -> None:
    """Hide :data:`SILENCED` (or, with ``verbose``, stop hiding them). Idempotent."""
    by_logger: dict[str, list[str]] = {}
    for s in SILENCED:
        kind, _, name = s.source.partition(":")
        if kind == "logger":
            by_logger.setdefault(name, []).append(s.match)
    for name, texts in by_logger.items():
        logger = logging.getLogger(name)
        old = _FILTERS.pop(name, None)
        if old is not None:
            logger.removeFilter(old)
        if not verbose:
            _FILTERS[name] = _DropKnown(texts)
            logger.addFilter(_FILTERS[name])
    for s in SILENCED:
        kind, _, name = s.source.partition(":")
        if kind != "warnings":
            continue
        category = getattr(builtins, name, Warning)
        pattern = f".*{s.match}"
        warnings.filters[:] = [f for f in warnings.filters
                               if not (f[0] == "ignore" and f[1] is not None and f[1].pattern == pattern)]
        if not verbose:
            warnings.filterwarnings("ignore", message=pattern, category=category)


def configure(verbosity: int = NORMAL, stream: TextIO | None = None) -> logging.Logger:
    """Set up the ``fedsec`` logger for the command line (call once per process; calling
    again replaces the handler): ``verbosity`` is :data:`QUIET`, :data:`NORMAL` or
    :data:`VERBOSE`; messages go to ``stream`` (default stderr) as ``fedsec: message``
    (``fedsec <level>: message`` for warnings and errors, the logger name with --verbose)."""
    level = {QUIET: logging.WARNING, NORMAL: logging.INFO}.get(verbosity, logging.DEBUG)
    logger = logging.getLogger("fedsec")
    for h in list(logger.handlers):
        if h.get_name() == _HANDLER_NAME:
            logger.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    fmt = "%(name)s %(levelname)s: %(message)s" if verbosity >= VERBOSE else "fedsec: %(message)s"
    handler.setFormatter(_LevelPrefix(fmt))
    logger.addHandler(handler)
    logger.setLevel(level)
    silence_third_party(verbose=verbosity >= VERBOSE)
    return logger


class _LevelPrefix(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING and text.startswith("fedsec: "):
            text = f"fedsec {record.levelname.lower()}: " + text[len("fedsec: "):]
        return text

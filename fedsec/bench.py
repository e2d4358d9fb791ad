"""Sweeps: many independent federations described by one TOML file, run, resumed, tabulated.

A sweep file names a base scenario and the axes to vary::

    name = "byzantine"
    base = "../quickstart.toml"          # a scenario TOML (relative to this file), or a [base] table
    set = {"server.rounds" = 10}         # dotted overrides applied to the base for every cell
    malicious_fraction = [0.2]           # k = round(fraction * num_clients) attackers: partitions [0, k)
    alpha = [0.1, 1.0]                   # data.alpha
    seeds = [0, 1, 2]                    # run.seed
    vary = {"client.epochs" = [1, 2]}    # any other scenario field, as a dotted key -> values

    [[aggregators]]                      # server.aggregator (+ aggregator_params); a bare string also works
    name = "krum"
    params = {f = "$f"}                  # "$f" = the cell's number of attackers, "$n" = num_clients
    label = "krum"                       # column name in the tables (default: name)

    [[attacks]]                          # one attack entry given to partitions [0, k)
    behaviour = "alie"                   # "none" = no attacker (the baseline row)
    params = {}

The cells are the full grid of the axes, or, when ``[[cells]]`` tables are
given, the union of the sub-grids they describe (a key of a ``[[cells]]`` table
fixes that axis to one value or a list of values, referring to aggregators and
attacks by label; an axis it leaves out takes all its values).

Every cell is an ordinary :class:`~fedsec.Scenario` (``run.engine = "inline"``)
built with :meth:`Scenario.replace`; all of them are validated before anything
runs. A cell's directory is ``cells/<Scenario.digest()>/`` under the sweep
directory, so rerunning a sweep skips the cells whose run finished and reruns
the failed or interrupted ones; cells with an identical scenario run once.
Several cells run at once as Ray tasks (``jobs > 1``: a local Ray instance, or
the cluster at ``$RAY_ADDRESS``), or one after another in this process.

The sweep directory::

    sweep.toml     the sweep file as given        cells.json   the cells and their axis values
    cells/<digest>/status.json, scenario.toml, run/ (the run directory), error.txt (failed)
    results.csv    one row per cell               results.md   mean +- std over seeds, per metric
    plots/         heatmaps (attack x aggregator) and per-attack accuracy / ASR curves

:func:`write_report` rebuilds results.csv, results.md and plots/ from the
cells' metrics.jsonl and summary.json alone (``fedsec report DIR``).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import itertools
import json
import math
import os
import shutil
import socket
import time
import tomllib
import traceback
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsec.results import atomic_write
from fedsec.scenario import Scenario, ScenarioError

NO_ATTACK = "none"
"""The ``behaviour`` of an attack-axis entry that means: no attacker (the baseline)."""

_TOP_KEYS = ("name", "description", "base", "set", "aggregators", "attacks", "malicious_fraction",
             "alpha", "seeds", "vary", "cells")
_AGG_KEYS = ("name", "params", "label")
_ATTACK_KEYS = ("behaviour", "params", "label", "start_round", "end_round", "every")
_AXIS_FIELDS = {"server.aggregator": "aggregators", "server.aggregator_params": "aggregators",
                "attack": "attacks", "data.alpha": "alpha", "run.seed": "seeds"}
METRICS = {
    "final_clean_acc": "final clean accuracy",
    "final_asr": "final ASR (highest over the cell's triggers)",
    "max_asr": "max ASR over rounds (highest over the cell's triggers)",
    "det_precision": "detection precision (mean over rounds)",
    "det_recall": "detection recall (mean over rounds)",
    "det_fpr": "detection false-positive rate (mean over rounds)",
}


class SweepError(ValueError):
    """The sweep file is invalid; the message names the offending key or cell."""


# --------------------------------------------------------------------------------------
# the sweep file


@dataclass(frozen=True)
class AggregatorEntry:
    label: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttackEntry:
    label: str
    behaviour: str
    params: dict[str, Any] = field(default_factory=dict)
    start_round: int = 1
    end_round: int = 0
    every: int = 1


@dataclass(frozen=True)
class Cell:
    """One federation of the sweep: its axis values and its resolved scenario."""

    axes: dict[str, Any]
    num_malicious: int
    scenario: Scenario
    digest: str

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.axes.items())


@dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    source: str
    """The sweep file's text (copied to the sweep directory)."""
    aggregators: list[str]
    attacks: list[str]
    vary: list[str]
    cells: list[Cell]

    def unique(self) -> list[Cell]:
        """One cell per distinct scenario, in sweep order."""
        seen: dict[str, Cell] = {}
        for c in self.cells:
            seen.setdefault(c.digest, c)
        return list(seen.values())


def _unknown(raw: dict, allowed: tuple[str, ...], where: str) -> None:
    bad = [k for k in raw if k not in allowed]
    if not bad:
        return
    hints = []
    for k in bad:
        close = difflib.get_close_matches(k, allowed, n=1)
        hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    noun = "key" if len(bad) == 1 else "keys"
    raise SweepError(f"{where}: unknown {noun} {', '.join(hints)}; valid keys: {', '.join(allowed)}")


def _as_list(v: Any, where: str, kind: type | tuple[type, ...], expected: str) -> list:
    items = v if isinstance(v, list) else [v]
    if not items:
        raise SweepError(f"{where}: got an empty list, expected {expected}")
    for i, x in enumerate(items):
        if not isinstance(x, kind) or isinstance(x, bool):
            raise SweepError(f"{where}[{i}]: got {x!r}, expected {expected}")
    if len(set(map(repr, items))) != len(items):
        raise SweepError(f"{where}: got {items!r}, expected no repeated value")
    return items


def _flatten(table: dict[str, Any], cls: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables -> dotted keys, stopping at scenario fields that are themselves tables
    (``params``, ``aggregator_params``), so ``[set.server] rounds = 3`` == ``"server.rounds" = 3``."""
    hints = typing.get_type_hints(cls) if cls is not None else {}
    out: dict[str, Any] = {}
    for k, v in table.items():
        sub = hints.get(k) if "." not in k else None
        if isinstance(v, dict) and sub is not None and dataclasses.is_dataclass(sub):
            out.update(_flatten(v, sub, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _substitute(v: Any, f: int, n: int) -> Any:
    if isinstance(v, str) and v in ("$f", "$n"):
        return f if v == "$f" else n
    if isinstance(v, dict):
        return {k: _substitute(x, f, n) for k, x in v.items()}
    if isinstance(v, list):
        return [_substitute(x, f, n) for x in v]
    return v


def _entries(raw: Any, where: str, keys: tuple[str, ...], main: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise SweepError(f"{where}: got {raw!r}, expected a non-empty list of names or tables")
    out, labels = [], {}
    for i, e in enumerate(raw):
        here = f"{where}[{i}]"
        if isinstance(e, str):
            e = {main: e}
        if not isinstance(e, dict):
            raise SweepError(f"{here}: got {e!r}, expected a name or a table")
        _unknown(e, keys, here)
        if not isinstance(e.get(main), str) or not e[main]:
            raise SweepError(f"{here}.{main}: got {e.get(main)!r}, expected a non-empty string")
        if not isinstance(e.get("params", {}), dict):
            raise SweepError(f"{here}.params: got {e['params']!r}, expected a table")
        label = e.get("label", e[main])
        if not isinstance(label, str) or not label:
            raise SweepError(f"{here}.label: got {label!r}, expected a non-empty string")
        if label in labels:
            raise SweepError(f"{here}: label {label!r} already used by {where}[{labels[label]}]; "
                             "give each entry a distinct label")
        labels[label] = i
        out.append({**e, "label": label})
    return out


def _read_base(raw: Any, base_dir: Path) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw:
        raise SweepError(f"base: got {raw!r}, expected a scenario TOML path or a [base] table")
    candidates = [base_dir / raw, Path(raw)] if not Path(raw).is_absolute() else [Path(raw)]
    for p in candidates:
        if p.is_file():
            from fedsec.scenario import read_toml

            try:
                return read_toml(p, "scenario file")[1]
            except ScenarioError as e:
                raise SweepError(f"base: {e}") from None
    raise SweepError(f"base: scenario file {raw!r} not found (looked in {base_dir} and the current directory)")


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and validate a sweep file, building (and validating) every cell's scenario.

    ``overrides`` (``KEY=VALUE``, VALUE parsed as TOML) are added to the file's ``set``
    table, e.g. ``["data.root=/datasets"]``.
    """
    from fedsec.scenario import parse_override, read_toml

    path = Path(path)
    try:
        text, raw = read_toml(path, "sweep file")
        for item in overrides or []:
            key, value = parse_override(item, "--set", "data.root=/datasets")
            if not isinstance(raw.get("set", {}), dict):
                break  # parse_sweep reports the bad `set`
            raw["set"] = {**_flatten(raw.get("set", {}), Scenario), key: value}
    except ScenarioError as e:
        raise SweepError(str(e)) from None
    return parse_sweep(raw, base_dir=path.parent, default_name=path.stem, source=text)


def parse_sweep(raw: dict[str, Any], *, base_dir: Path = Path("."), default_name: str = "sweep",
                source: str = "") -> Sweep:
    _unknown(raw, _TOP_KEYS, "sweep")
    name = raw.get("name", default_name)
    if not isinstance(name, str) or not name or "/" in name:
        raise SweepError(f"name: got {name!r}, expected a non-empty name without '/'")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise SweepError(f"description: got {description!r}, expected a string")
    if "base" not in raw:
        raise SweepError("sweep: missing required key 'base' (a scenario TOML path or a [base] table)")
    try:
        base = Scenario.from_dict(_read_base(raw["base"], base_dir))
    except ScenarioError as e:
        raise SweepError(f"base: {e}") from None
    set_ = raw.get("set", {})
    if not isinstance(set_, dict):
        raise SweepError(f"set: got {set_!r}, expected a table of dotted overrides")
    if set_:
        try:
            base = base.replace(**_flatten(set_, Scenario))
        except ScenarioError as e:
            raise SweepError(f"set: {e}") from None

    aggs = [AggregatorEntry(e["label"], e["name"], dict(e.get("params", {})))
            for e in _entries(raw["aggregators"], "aggregators", _AGG_KEYS, "name")] \
        if "aggregators" in raw else None
    attacks = None
    if "attacks" in raw:
        attacks = []
        for i, e in enumerate(_entries(raw["attacks"], "attacks", _ATTACK_KEYS, "behaviour")):
            for k in ("start_round", "end_round", "every"):
                if k in e and (not isinstance(e[k], int) or isinstance(e[k], bool)):
                    raise SweepError(f"attacks[{i}].{k}: got {e[k]!r}, expected an integer")
            attacks.append(AttackEntry(e["label"], e["behaviour"], dict(e.get("params", {})),
                                       e.get("start_round", 1), e.get("end_round", 0), e.get("every", 1)))

    fractions = None
    if "malicious_fraction" in raw:
        if attacks is None:
            raise SweepError("malicious_fraction: only meaningful with an attacks axis "
                             "(the base scenario's own attack entries are used as they are)")
        fractions = [float(x) for x in _as_list(raw["malicious_fraction"], "malicious_fraction",
                                                  (int, float), "a number in (0, 1)")]
        for i, x in enumerate(fractions):
            if not 0 < x < 1:
                raise SweepError(f"malicious_fraction[{i}]: got {x!r}, expected a number in (0, 1)")
    elif attacks is not None and any(a.behaviour != NO_ATTACK for a in attacks):
        raise SweepError("malicious_fraction: required with an attacks axis (e.g. malicious_fraction = [0.2])")
    alphas = [float(x) for x in _as_list(raw["alpha"], "alpha", (int, float), "a number > 0")] \
        if "alpha" in raw else None
    seeds = _as_list(raw["seeds"], "seeds", int, "an integer") if "seeds" in raw else None

    vary_raw = raw.get("vary", {})
    if not isinstance(vary_raw, dict):
        raise SweepError(f"vary: got {vary_raw!r}, expected a table of dotted key -> list of values")
    vary: dict[str, list] = {}
    for k, v in _flatten(vary_raw, Scenario).items():
        if k in _AXIS_FIELDS or k.startswith("attack."):
            raise SweepError(f"vary.{k}: use the {_AXIS_FIELDS.get(k, 'attacks')!r} axis for this field")
        if not isinstance(v, list) or not v:
            raise SweepError(f"vary.{k}: got {v!r}, expected a non-empty list of values")
        vary[k] = v

    # The axes, in the order of the CSV columns; None = not an axis (the base's value).
    axes: dict[str, list | None] = {
        "aggregator": [a.label for a in aggs] if aggs else None,
        "attack": [a.label for a in attacks] if attacks else None,
        "malicious_fraction": fractions,
        "alpha": alphas,
        **{k: list(v) for k, v in vary.items()},
        "seed": seeds,
    }
    grids = _grids(raw.get("cells"), axes, list(vary))
    agg_of = {a.label: a for a in aggs or []}
    attack_of = {a.label: a for a in attacks or []}

    cells: list[Cell] = []
    errors: list[str] = []
    seen: set[tuple] = set()
    for grid in grids:
        names = list(grid)
        for combo in itertools.product(*(grid[n] for n in names)):
            point = dict(zip(names, combo))
            key = tuple(repr(point.get(n)) for n in axes)
            if key in seen:
                continue
            seen.add(key)
            try:
                cells.append(_make_cell(base, point, vary, agg_of, attack_of))
            except (ScenarioError, SweepError) as e:
                desc = " ".join(f"{k}={v}" for k, v in point.items())
                errors.append(f"cell {desc}: {e}")
    if errors:
        more = f"\n... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise SweepError(f"{len(errors)} invalid cell(s):\n" + "\n".join(errors[:10]) + more)
    return Sweep(name=name, description=description, source=source,
                 aggregators=axes["aggregator"] or sorted({c.axes["aggregator"] for c in cells}),
                 attacks=axes["attack"] or sorted({c.axes["attack"] for c in cells}),
                 vary=list(vary), cells=cells)


def _grids(raw_cells: Any, axes: dict[str, list | None], vary: list[str]) -> list[dict[str, list]]:
    full = {k: v for k, v in axes.items() if v is not None}
    if raw_cells is None:
        return [full]
    if not isinstance(raw_cells, list) or not raw_cells:
        raise SweepError(f"cells: got {raw_cells!r}, expected a non-empty list of tables")
    allowed = tuple(k for k in axes if axes[k] is not None)
    grids = []
    for i, c in enumerate(raw_cells):
        where = f"cells[{i}]"
        if not isinstance(c, dict):
            raise SweepError(f"{where}: got {c!r}, expected a table")
        _unknown(c, allowed, where)
        g = dict(full)
        for k, v in c.items():
            values = v if isinstance(v, list) else [v]
            for x in values:
                if not any(x == y for y in full[k]):
                    raise SweepError(f"{where}.{k}: got {x!r}, expected one of {full[k]!r}")
            g[k] = [y for y in full[k] if any(x == y for x in values)]
        grids.append(g)
    return grids


def _make_cell(base: Scenario, point: dict[str, Any], vary: dict[str, list],
               agg_of: dict[str, AggregatorEntry], attack_of: dict[str, AttackEntry]) -> Cell:
    ov: dict[str, Any] = {k: point[k] for k in vary}
    if "alpha" in point:
        ov["data.alpha"] = point["alpha"]
    if "seed" in point:
        ov["run.seed"] = point["seed"]
    ov["run.engine"] = "inline"
    s = base.replace(**ov)
    n = s.data.num_clients
    k = 0
    if "attack" in point:
        a = attack_of[point["attack"]]
        frac = point.get("malicious_fraction")
        if a.behaviour == NO_ATTACK:
            ov["attack"] = []
            if frac is not None:
                k = _num_malicious(frac, n)  # what "$f" means for the rule; nobody attacks
        else:
            k = _num_malicious(frac, n)
            if k < 1:
                raise SweepError(f"malicious_fraction {frac} of {n} clients rounds to 0 attackers")
            ov["attack"] = [{"behaviour": a.behaviour, "partitions": list(range(k)),
                             "params": _substitute(a.params, k, n), "start_round": a.start_round,
                             "end_round": a.end_round, "every": a.every}]
    if "aggregator" in point:
        g = agg_of[point["aggregator"]]
        ov["server.aggregator"] = g.name
        ov["server.aggregator_params"] = _substitute(g.params, k, n)
    s = base.replace(**ov)
    malicious = sorted({p for a in s.attack for p in a.partitions})
    axes = {
        "aggregator": point.get("aggregator", s.server.aggregator),
        "attack": point.get("attack", "+".join(a.behaviour for a in s.attack) or NO_ATTACK),
        "malicious_fraction": point.get("malicious_fraction", round(len(malicious) / n, 6)),
        "alpha": s.data.alpha,
        **{key: point[key] for key in vary},
        "seed": s.run.seed,
    }
    if "attack" in point and attack_of[point["attack"]].behaviour == NO_ATTACK:
        malicious = []
    return Cell(axes=axes, num_malicious=len(malicious), scenario=s, digest=s.digest())


def _num_malicious(frac: float, n: int) -> int:
    return int(math.floor(frac * n + 0.5))  # round half up: 0.25 x 10 -> 3


# --------------------------------------------------------------------------------------
# running


def cell_dir(out: Path, digest: str) -> Path:
    return Path(out) / "cells" / digest


def read_status(d: Path) -> dict[str, Any]:
    try:
        return json.loads((d / "status.json").read_text())
    except (OSError, ValueError):
        return {"status": "pending"}


def is_done(d: Path) -> bool:
    return (read_status(d).get("status") == "done" and (d / "run" / "summary.json").is_file()
            and (d / "run" / "metrics.jsonl").is_file())


def _write_status(d: Path, status: dict[str, Any]) -> None:
    atomic_write(d / "status.json", json.dumps(status, indent=2) + "\n")


def run_cell(toml_text: str, directory: str) -> dict[str, Any]:
    """Run one cell's federation (inline engine) into ``directory``; never raises for a
    failing federation: the traceback goes to error.txt and the status says ``failed``.

    Used in-process (``jobs = 1``) and as the body of the Ray task.
    """
    import logging

    import torch

    from fedsec.api import run as run_federation

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    s = Scenario.from_dict(tomllib.loads(toml_text))
    for old in d.iterdir():  # a previous, failed or interrupted attempt
        if old.is_dir():
            shutil.rmtree(old)
        elif old.name == "error.txt":
            old.unlink()
    status: dict[str, Any] = {"status": "running", "digest": s.digest(), "host": socket.gethostname(),
                              "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(d / "scenario.toml", toml_text)
    _write_status(d, status)
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)  # Flower's per-run notices would drown the progress display
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        torch.set_num_threads(s.run.threads)
        result = run_federation(s, output=d / "attempt")
        os.replace(result.run_dir, d / "run")
        shutil.rmtree(d / "attempt", ignore_errors=True)
        status["status"] = "done"
    except Exception as e:
        atomic_write(d / "error.txt", traceback.format_exc())
        status.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0][:500])
    finally:
        torch.set_num_threads(threads)
        flwr_log.setLevel(level)
    status["wall_seconds"] = round(time.perf_counter() - t0, 3)
    _write_status(d, status)
    return status


def _mark_failed(d: Path, error: str, tb: str) -> dict[str, Any]:
    st = {**read_status(d), "status": "failed", "error": error.splitlines()[0][:500] if error else "?"}
    atomic_write(d / "error.txt", tb)
    _write_status(d, st)
    return st


def write_manifest(sweep: Sweep, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if sweep.source:
        atomic_write(out / "sweep.toml", sweep.source)
    manifest = {
        "name": sweep.name,
        "description": sweep.description,
        "aggregators": sweep.aggregators,
        "attacks": sweep.attacks,
        "vary": sweep.vary,
        "cells": [{**c.axes, "num_malicious": c.num_malicious, "digest": c.digest} for c in sweep.cells],
    }
    atomic_write(out / "cells.json", json.dumps(manifest, indent=1) + "\n")


@dataclass
class SweepOutcome:
    total: int
    skipped: int
    done: int
    failed: list[tuple[Cell, str]]


def run_sweep(sweep: Sweep, out: str | Path, *, jobs: int = 1,
              on_cell: Callable[[Cell, dict[str, Any]], None] | None = None,
              on_start: Callable[[int, int], None] | None = None) -> SweepOutcome:
    """Run the cells not finished yet (``jobs`` at a time), then write the report.

    ``on_start(total, skipped)`` and ``on_cell(cell, status)`` drive a progress display.
    """
    if jobs < 1:
        raise SweepError(f"jobs: got {jobs!r}, expected an integer >= 1")
    out = Path(out)
    write_manifest(sweep, out)
    unique = sweep.unique()
    todo = [c for c in unique if not is_done(cell_dir(out, c.digest))]
    # Seed-major order: an interrupted sweep has whole tables for its first seeds.
    seed_rank = {s: i for i, s in enumerate(dict.fromkeys(c.axes["seed"] for c in sweep.cells))}
    todo.sort(key=lambda c: seed_rank[c.axes["seed"]])
    outcome = SweepOutcome(total=len(unique), skipped=len(unique) - len(todo), done=0, failed=[])
    if on_start:
        on_start(outcome.total, outcome.skipped)

    def finished(c: Cell, st: dict[str, Any]) -> None:
        if st.get("status") == "done":
            outcome.done += 1
        else:
            outcome.failed.append((c, st.get("error", "?")))
        if on_cell:
            on_cell(c, st)

    try:
        if jobs == 1 or len(todo) <= 1:
            for c in todo:
                finished(c, run_cell(c.scenario.to_toml(), str(cell_dir(out, c.digest))))
        else:
            _run_ray(todo, out, jobs, finished)
    finally:
        write_report(out)
    return outcome


def _run_ray(todo: list[Cell], out: Path, jobs: int, finished: Callable[[Cell, dict], None]) -> None:
    import ray

    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING",
                                  "log_to_driver": False}
        address = os.environ.get("RAY_ADDRESS", "")
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=jobs, **kwargs)
        except Exception as e:
            raise SweepError(f"could not start Ray ({type(e).__name__}: {e}); no cell was started: "
                             "retry, or run the cells one after another with jobs = 1") from None
        started = True
    task = ray.remote(run_cell)
    queue = list(todo)
    pending: dict[Any, Cell] = {}
    try:
        while queue or pending:
            while queue and len(pending) < jobs:
                c = queue.pop(0)
                r = c.scenario.run
                gpus = (r.num_gpus or 1.0) if r.device.startswith("cuda") else 0
                ref = task.options(num_cpus=r.threads, num_gpus=gpus, max_retries=0).remote(
                    c.scenario.to_toml(), str(cell_dir(out, c.digest).resolve()))
                pending[ref] = c
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                c = pending.pop(ref)
                try:
                    st = ray.get(ref)
                except Exception as e:  # the worker died (OOM, killed): the task could not say
                    st = _mark_failed(cell_dir(out, c.digest), f"{type(e).__name__}: {e}",
                                      traceback.format_exc())
                finished(c, st)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------------------
# results


def _nanmean(xs: list[Any]) -> float | None:
    v = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(v) / len(v) if v else None


def cell_metrics(run_dir: Path) -> dict[str, Any]:
    """The figures of one finished run, from its metrics.jsonl and summary.json."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    summary = json.loads((run_dir / "summary.json").read_text())
    last = rows[-1] if rows else {}
    triggers = sorted({t for r in rows for t in r.get("asr", {})})
    m: dict[str, Any] = {"rounds": len(rows), "final_clean_acc": last.get("clean_acc")}
    for t in triggers:
        vals = [r["asr"].get(t) for r in rows if r["asr"].get(t) is not None]
        m[f"max_asr.{t}"] = max(vals) if vals else None
        m[f"final_asr.{t}"] = last.get("asr", {}).get(t)
    finals = [m[f"final_asr.{t}"] for t in triggers if m[f"final_asr.{t}"] is not None]
    maxes = [m[f"max_asr.{t}"] for t in triggers if m[f"max_asr.{t}"] is not None]
    m["final_asr"] = max(finals) if finals else None
    m["max_asr"] = max(maxes) if maxes else None
    for k in ("precision", "recall", "fpr"):
        m[f"det_{k}"] = _nanmean([r.get("detection", {}).get(k) for r in rows])
    m["seconds"] = summary.get("seconds", sum(r.get("seconds", 0.0) for r in rows))
    m["curve_acc"] = [r.get("clean_acc") for r in rows]
    m["curve_asr"] = [max((v for v in r.get("asr", {}).values() if v is not None), default=None)
                      for r in rows] if triggers else []
    return m


def collect(out: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest and one record per cell (axis values, status, metrics) of a sweep directory."""
    out = Path(out)
    mf = out / "cells.json"
    if not mf.is_file():
        raise SweepError(f"{out}: not a sweep directory (no cells.json)")
    manifest = json.loads(mf.read_text())
    records = []
    cache: dict[str, dict[str, Any]] = {}
    for c in manifest["cells"]:
        d = cell_dir(out, c["digest"])
        if c["digest"] not in cache:
            st = read_status(d)
            rec: dict[str, Any] = {"status": st.get("status", "pending")}
            if is_done(d):
                try:
                    rec.update(cell_metrics(d / "run"))
                except (OSError, ValueError, KeyError) as e:
                    rec = {"status": "failed", "error": f"unreadable results: {e}"}
            elif rec["status"] == "running":
                rec["status"] = "incomplete"  # interrupted, or still running elsewhere
            if rec["status"] == "failed" and "error" not in rec:
                rec["error"] = st.get("error", "")
            cache[c["digest"]] = rec
        records.append({**{k: v for k, v in c.items()}, **cache[c["digest"]]})
    return manifest, records


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return format(v, ".6g")
    return str(v)


def results_csv(manifest: dict[str, Any], records: list[dict[str, Any]]) -> str:
    axis_cols = ["aggregator", "attack", "malicious_fraction", "num_malicious", "alpha",
                 *manifest.get("vary", []), "seed"]
    triggers = sorted({k.split(".", 1)[1] for r in records for k in r if k.startswith("max_asr.")})
    cols = ["cell", *axis_cols, "status", "rounds", "final_clean_acc", "final_asr", "max_asr",
            *[f"final_asr.{t}" for t in triggers], *[f"max_asr.{t}" for t in triggers],
            "det_precision", "det_recall", "det_fpr", "seconds", "error"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in records:
        w.writerow([_fmt(r.get("digest")) if c == "cell" else _fmt(r.get(c)) for c in cols])
    return buf.getvalue()


def _group_axes(manifest: dict[str, Any]) -> list[str]:
    return ["malicious_fraction", "alpha", *manifest.get("vary", [])]


def _groups(manifest: dict[str, Any], records: list[dict[str, Any]]) -> list[tuple[dict, list[dict]]]:
    keys = _group_axes(manifest)
    groups: dict[str, tuple[dict, list[dict]]] = {}
    for r in records:
        g = {k: r.get(k) for k in keys}
        groups.setdefault(json.dumps(g, sort_keys=True, default=str), (g, []))[1].append(r)
    return list(groups.values())


def _varying(manifest: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    return [k for k in _group_axes(manifest) if len({json.dumps(r.get(k)) for r in records}) > 1]


def _stats(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _table(manifest: dict, rows: list[dict], metric: str) -> str | None:
    aggs, attacks = manifest["aggregators"], manifest["attacks"]
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["attack"], r["aggregator"]), []).append(r)
    lines = ["| attack \\ aggregator | " + " | ".join(aggs) + " |", "|---|" + "---:|" * len(aggs)]
    any_value = False
    for att in attacks:
        if not any((att, a) in by for a in aggs):
            continue
        cells = []
        for a in aggs:
            rs = by.get((att, a), [])
            vals = [r[metric] for r in rs if r.get(metric) is not None]
            if not vals:
                cells.append("—" if rs else "")
                continue
            any_value = True
            mean, std = _stats(vals)
            txt = f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
            if len(vals) < len(rs):
                txt += f" ({len(vals)}/{len(rs)})"
            cells.append(txt)
        lines.append(f"| {att} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if any_value else None


def results_md(manifest: dict[str, Any], records: list[dict[str, Any]]) -> str:
    status: dict[str, int] = {}
    for r in {r["digest"]: r for r in records}.values():
        status[r["status"]] = status.get(r["status"], 0) + 1
    seeds = sorted({r.get("seed") for r in records}, key=str)
    out = [f"# {manifest['name']}", ""]
    if manifest.get("description"):
        out += [manifest["description"].strip(), ""]
    out += [f"{len(records)} cells ({', '.join(f'{v} {k}' for k, v in sorted(status.items()))}); "
            f"mean ± std over seeds {seeds} (sample std; `(k/n)`: only k of n seeds finished; "
            "— : no value, e.g. no trigger or nothing rejected).", ""]
    varying = _varying(manifest, records)
    for g, rows in _groups(manifest, records):
        if varying:
            out += ["## " + ", ".join(f"{k} = {g[k]}" for k in varying), ""]
        for metric, title in METRICS.items():
            t = _table(manifest, rows, metric)
            if t is None:
                continue
            out += [f"{'###' if varying else '##'} {title}", "", t, ""]
    failed = [r for r in {r["digest"]: r for r in records}.values() if r["status"] == "failed"]
    if failed:
        out += ["## failed cells", ""]
        out += [f"- `{r['digest']}` ({r['aggregator']}, {r['attack']}, seed {r['seed']}): {r.get('error', '')}"
                for r in failed]
        out.append("")
    return "\n".join(out)


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in text)


def _slug(g: dict[str, Any], varying: list[str]) -> str:
    s = "_".join(f"{k.split('.')[-1]}{g[k]}" for k in varying)
    return "__" + _safe(s) if s else ""


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def write_plots(manifest: dict[str, Any], records: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    plots = Path(out) / "plots"
    for old in plots.glob("*.png"):
        old.unlink()
    written: list[Path] = []
    aggs, attacks = manifest["aggregators"], manifest["attacks"]
    varying = _varying(manifest, records)
    for g, rows in _groups(manifest, records):
        suffix = _slug(g, varying)
        # final ASR is what a rule let through; max ASR (often ~1 in the first rounds of an
        # untrained model whatever the rule, see experiments/bench/README.md) is kept too
        for metric, title in (("final_clean_acc", "final clean accuracy"), ("final_asr", "final ASR"),
                              ("max_asr", "max ASR")):
            grid = [[None] * len(aggs) for _ in attacks]
            for i, att in enumerate(attacks):
                for j, a in enumerate(aggs):
                    vals = [r[metric] for r in rows if r["attack"] == att and r["aggregator"] == a
                            and r.get(metric) is not None]
                    grid[i][j] = sum(vals) / len(vals) if vals else None
            keep = [i for i in range(len(attacks)) if any(v is not None for v in grid[i])]
            if not keep:
                continue
            data = [[math.nan if grid[i][j] is None else grid[i][j] for j in range(len(aggs))] for i in keep]
            fig, ax = plt.subplots(figsize=(1.8 + 0.75 * len(aggs), 1.6 + 0.45 * len(keep)))
            im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis" if metric == "final_clean_acc" else "magma",
                           aspect="auto")
            ax.set_xticks(range(len(aggs)), aggs, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(keep)), [attacks[i] for i in keep], fontsize=8)
            for yi, row in enumerate(data):
                for xj, v in enumerate(row):
                    if not math.isnan(v):
                        ax.text(xj, yi, f"{v:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if v < 0.6 else "black")
            ax.set_title(title + (" " + ", ".join(f"{k}={g[k]}" for k in varying) if varying else ""),
                         fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            fig.tight_layout()
            path = plots / f"heatmap_{metric}{suffix}.png"
            _save(fig, path)
            written.append(path)
        for att in attacks:
            rs = [r for r in rows if r["attack"] == att and r.get("curve_acc")]
            if not rs:
                continue
            has_asr = any(r.get("curve_asr") for r in rs)
            fig, axs = plt.subplots(1, 2 if has_asr else 1, figsize=(9 if has_asr else 5, 3.3), squeeze=False)
            for a in aggs:
                mine = [r for r in rs if r["aggregator"] == a]
                if not mine:
                    continue
                for ax, key in zip(axs[0], ("curve_acc", "curve_asr")):
                    curve = _mean_curve([r.get(key) or [] for r in mine])
                    if curve:
                        ax.plot(range(1, len(curve) + 1), curve, marker=".", label=a)
            for ax, lab in zip(axs[0], ("clean accuracy", "ASR")):
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_xlabel("round")
                ax.set_ylabel(lab)
                ax.set_ylim(-0.02, 1.02)
                ax.grid(alpha=0.3)
            axs[0][0].legend(fontsize=7, ncol=2)
            fig.suptitle(f"attack {att}" + (" (" + ", ".join(f"{k}={g[k]}" for k in varying) + ")"
                                             if varying else ""), fontsize=9)
            fig.tight_layout()
            path = plots / f"curves_{_safe(att)}{suffix}.png"
            _save(fig, path)
            written.append(path)
    return written


def _mean_curve(curves: list[list[Any]]) -> list[float | None]:
    n = max((len(c) for c in curves), default=0)
    out: list[float | None] = []
    for i in range(n):
        vals = [c[i] for c in curves if i < len(c) and c[i] is not None]
        out.append(sum(vals) / len(vals) if vals else None)
    return out


def write_report(out: str | Path) -> dict[str, Any]:
    """(Re)write results.csv, results.md and plots/ from the cells' run directories."""
    out = Path(out)
    manifest, records = collect(out)
    atomic_write(out / "results.csv", results_csv(manifest, records))
    atomic_write(out / "results.md", results_md(manifest, records))
    plots = write_plots(manifest, records, out)
    return {"csv": out / "results.csv", "md": out / "results.md", "plots": plots, "records": records}

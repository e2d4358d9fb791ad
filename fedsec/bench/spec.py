"""The sweep file: axes, entries and the grid of cells, each an ordinary validated Scenario.

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

Every cell is an ordinary :class:`~fedsec.Scenario` (``run.engine = "inline"``,
``run.vectorize = true`` unless the base or ``set`` says otherwise) built with
:meth:`Scenario.replace`; all of them are validated before anything
runs, and a cell is identified by its scenario's :meth:`~fedsec.Scenario.digest`.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsec.scenario import Scenario, ScenarioError

NO_ATTACK = "none"
"""The ``behaviour`` of an attack-axis entry that means: no attacker (the baseline)."""

_TOP_KEYS = ("name", "description", "base", "set", "aggregators", "attacks", "malicious_fraction",
             "alpha", "seeds", "vary", "cells")
_AGG_KEYS = ("name", "params", "label")
_ATTACK_KEYS = ("behaviour", "params", "label", "start_round", "end_round", "every")
_AXIS_FIELDS = {"server.aggregator": "aggregators", "server.aggregator_params": "aggregators",
                "attack": "attacks", "data.alpha": "alpha", "run.seed": "seeds"}


class SweepError(ValueError):
    """The sweep file is invalid; the message names the offending key or cell."""


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


def _vectorized_unless_set(base: Scenario, base_raw: dict[str, Any], set_: dict[str, Any]) -> Scenario:
    """``base`` with ``run.vectorize = true`` unless the base TOML or ``set`` gives it.

    Cells take the batched client path wherever it applies (the others train one by one):
    about 2x faster on this CPU, results within float tolerance of per-client training
    (tests/test_vectorized.py). A sweep that needs per-client bitwise results sets it false.
    """
    run_table = base_raw.get("run")
    if "run.vectorize" in _flatten(set_, Scenario) or (isinstance(run_table, dict) and "vectorize" in run_table):
        return base
    return base.replace(**{"run.vectorize": True})


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
    base_raw = _read_base(raw["base"], base_dir)
    try:
        base = Scenario.from_dict(base_raw)
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
    base = _vectorized_unless_set(base, base_raw, set_)

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

"""A run directory as data: ``load_run`` (a DataFrame, schema :data:`RUN_COLUMNS`) and the
scenario in words (``scenario_line``)."""

from __future__ import annotations

import json
import logging
import math
import tomllib
from pathlib import Path
from typing import Any

from fedsec.results import METRICS, ResultsError, read_metrics

log = logging.getLogger(__name__)

CURVES = "curves.png"
REPORT = "report.md"

RUN_COLUMNS: dict[str, str] = {
    "round": "federated round; 0 is the initial model, evaluated before any training "
             "(summary.json's `initial`), which has only the evaluation columns",
    "clean_acc": "accuracy on the clean test set, a fraction in [0, 1]",
    "test_loss": "mean cross-entropy on the clean test set (nats per example)",
    "train_loss": "the replied clients' last-epoch training loss, mean weighted by their example "
                  "counts (nats per example); NaN when no client replied",
    "asr.<trigger>": "attack success rate of each trigger of the scenario's attacks: the fraction "
                     "of triggered test examples not already of the target class that the model "
                     "assigns to the target, in [0, 1]",
    "detection.precision": "rejected clients that attacked / rejected clients (NaN when the rule "
                           "rejected nobody)",
    "detection.recall": "attackers rejected / attackers that replied (NaN when nobody attacked)",
    "detection.fpr": "honest clients rejected / honest clients that replied",
    "num_sampled": "clients sampled this round (len of `sampled`)",
    "num_accepted": "clients whose update the rule used",
    "num_malicious": "sampled clients that attacked this round",
    "num_failed": "sampled clients whose reply was an error or malformed",
    "num_nonfinite": "replies holding NaN/inf (never aggregated)",
    "seconds": "the whole round, wall-clock seconds",
    "train_seconds": "from sending the model to the last reply (client training), seconds",
    "agg_seconds": "update matrix, adversary stage, pre-aggregators and rule, seconds",
    "eval_seconds": "centralized evaluation (clean accuracy, loss, per-class accuracy, ASR), seconds",
    "bytes_received": "bytes of the arrays in the clients' replies",
    "per_class_acc.<c>": "accuracy on the test examples of class c (NaN if the class is absent); "
                         "weighted by the class counts their mean is clean_acc",
    "sampled": "partition ids sampled this round (list)",
    "accepted": "partition ids whose update the rule used (list)",
    "malicious": "sampled partition ids that attacked this round (list)",
    "nonfinite": "partition ids whose reply held NaN/inf (list)",
    "failed": "[{partition, reason}] of the clients that failed (list)",
    "scores.<partition>": "the rule's suspicion score of each replied client, higher = more "
                          "suspect (rules that score clients only)",
    "plugins.<plugin>.<figure>": "a plugin's per-round figures (e.g. an audit every k rounds)",
}
"""Columns of :func:`load_run` (``<...>``: one column per trigger, class, partition or
plugin figure). ``df.attrs`` holds ``name``, ``run_dir``, ``summary`` (summary.json) and
``scenario`` (scenario.toml as a dict)."""

_FIRST = ["round", "clean_acc", "test_loss", "train_loss"]
_LISTS = ("sampled", "accepted", "malicious", "failed", "nonfinite")


# -- reading -------------------------------------------------------------------------------
def is_run_dir(path: str | Path) -> bool:
    """A run directory (scenario.toml and metrics.jsonl), as opposed to a sweep directory."""
    p = Path(path)
    return (p / "scenario.toml").is_file() and (p / METRICS).is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ResultsError(f"cannot read {str(path)!r}: {e}") from e


def read_scenario_dict(run_dir: str | Path) -> dict[str, Any]:
    """scenario.toml as plain data, unvalidated (a run made with components this process
    cannot import still reads); {} when there is none."""
    path = Path(run_dir) / "scenario.toml"
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ResultsError(f"cannot read {str(path)!r}: {e}") from e


def _require_run(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise ResultsError(f"{str(run_dir)!r} does not exist or is not a directory")
    if not is_run_dir(run_dir):
        raise ResultsError(f"{str(run_dir)!r} is not a run directory (expected scenario.toml and "
                           f"{METRICS}, as `fedsec run` writes)")


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        elif k == "per_class_acc" and not prefix and isinstance(v, list):
            out.update({f"{key}.{c}": a for c, a in enumerate(v)})
        else:
            out[key] = v
    return out


def flat_rows(rows: list[dict[str, Any]], initial: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The rows of :func:`load_run` as dicts (no pandas): round 0 from ``initial`` first."""
    out = []
    if initial:
        first = {"round": 0, **initial}
        first.update({k: [] for k in _LISTS})
        out.append(first)
    out.extend(rows)
    flat = []
    for r in out:
        f = _flatten(r)
        for k in _LISTS:
            if isinstance(r.get(k), list):
                f[f"num_{k}"] = len(r[k])
        flat.append(f)
    return flat


def _column_order(columns: list[str]) -> list[str]:
    def rank(c: str) -> tuple[int, Any]:
        if c in _FIRST:
            return 0, _FIRST.index(c)
        for i, pre in enumerate(("asr.", "detection.", "num_")):
            if c.startswith(pre):
                return 1 + i, c
        if c in ("seconds", "train_seconds", "agg_seconds", "eval_seconds", "bytes_received"):
            return 4, c
        if c.startswith("per_class_acc."):
            return 5, int(c.rsplit(".", 1)[1])
        if c in _LISTS:
            return 6, _LISTS.index(c)
        if c.startswith("scores."):
            tail = c.split(".", 1)[1]
            return 7, int(tail) if tail.isdigit() else tail
        return 8, c

    return sorted(columns, key=lambda c: (rank(c)[0], str(rank(c)[1]).zfill(8)))


def load_run(run_dir: str | Path, *, initial: bool = True):
    """A run directory as a pandas DataFrame, one row per round (schema: :data:`RUN_COLUMNS`).

    ``initial=True`` puts the initial model's evaluation first as round 0 (its training,
    timing and detection columns are NaN, its lists empty). Nested fields are flattened
    to dotted columns (``asr.badnets``, ``detection.recall``, ``per_class_acc.3``,
    ``plugins.neural_cleanse.l1_norms``); JSON nulls are NaN. ``df.attrs`` holds
    ``name``, ``run_dir``, ``summary`` (summary.json, {} while the run is going) and
    ``scenario`` (scenario.toml as a dict).

    Raises :class:`~fedsec.results.ResultsError` when ``run_dir`` is not a run directory,
    ImportError (saying what to install) when pandas is missing.
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("fedsec.load_run returns a pandas DataFrame and pandas is not installed: "
                          "pip install pandas") from None
    path = Path(run_dir)
    _require_run(path)
    summary = _read_json(path / "summary.json")
    flat = flat_rows(read_metrics(path / METRICS), summary.get("initial") if initial else None)
    df = pd.DataFrame.from_records(flat)
    if len(df.columns):
        df = df[_column_order(list(df.columns))]
    for c in df.columns:
        if c in _LISTS:
            continue
        values = [v for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            df[c] = pd.to_numeric(df[c].astype("float64") if any(isinstance(v, float) for v in values)
                                  or len(values) < len(df) else df[c])
        elif not values:  # all null (e.g. precision when nothing was ever rejected)
            df[c] = df[c].astype("float64")
    scenario = read_scenario_dict(path)
    df.attrs.update(name=scenario.get("name", path.name), run_dir=str(path), summary=summary,
                    scenario=scenario)
    return df


# -- describing a scenario -----------------------------------------------------------------
def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def rule_text(raw: dict[str, Any]) -> str:
    """The server's rule as written in a title: ``nnm -> krum(f=2)``."""
    server = raw.get("server", {})
    rule = server.get("aggregator", "mean")
    if server.get("aggregator_params"):
        rule += f"({_params_text(server['aggregator_params'])})"
    pre = [p.get("name", "?") for p in server.get("pre_aggregators", [])]
    return " -> ".join([*pre, rule])


def attack_text(raw: dict[str, Any]) -> str:
    """``badnets`` / ``badnets + alie``, or ``no attack``."""
    names = list(dict.fromkeys(a.get("behaviour", "?") for a in raw.get("attack", [])))
    return " + ".join(names) if names else "no attack"


def attackers(raw: dict[str, Any]) -> int:
    return len({p for a in raw.get("attack", []) for p in a.get("partitions", [])})


def split_text(raw: dict[str, Any]) -> str:
    data = raw.get("data", {})
    part = data.get("partitioner", "dirichlet")
    if part == "dirichlet":
        return f"Dirichlet α={data.get('alpha', 0.5)}"
    if part == "iid":
        return "IID"
    if part == "shards":
        return f"{data.get('shards_per_client', 2)} shards/client"
    return part


def scenario_parts(raw: dict[str, Any]) -> dict[str, str]:
    """What a run was, piece by piece: rule, attack, attacker fraction, data split, data and model."""
    data, model = raw.get("data", {}), raw.get("model", {})
    n = data.get("num_clients", 20)
    m = attackers(raw)
    return {"rule": rule_text(raw), "attack": attack_text(raw),
            "fraction": f"{m}/{n} clients malicious ({100 * m / n:.0f}%)" if m else f"{n} clients, all honest",
            "split": split_text(raw), "data": f"{data.get('dataset', 'digits')}, {model.get('name', 'cnn')}"}


def scenario_line(raw: dict[str, Any]) -> str:
    """One line naming what a run was: ``krum(f=2) vs alie · 4/20 clients malicious (20%) ·
    Dirichlet α=0.5 · digits, cnn``."""
    p = scenario_parts(raw)
    versus = f"{p['rule']} vs {p['attack']}" if raw.get("attack") else f"{p['rule']}, no attack"
    return f"{versus} · {p['fraction']} · {p['split']} · {p['data']}"


# -- curves --------------------------------------------------------------------------------

"""A sweep directory as a pandas DataFrame: ``fedsec.load_sweep(dir)``, one row per cell.

Columns (``SWEEP_COLUMNS`` documents each; ``df.attrs`` holds the sweep's name, description,
aggregators, attacks and ``vary`` keys in sweep order):

- the cell and its axes: ``cell`` (digest), ``aggregator`` and ``attack`` (labels),
  ``malicious_fraction``, ``num_malicious``, ``alpha``, one column per ``vary`` key (dotted,
  e.g. ``client.epochs``), ``seed``;
- its state: ``status`` (done, failed, incomplete, pending), ``error``, ``run_dir``;
- its figures, as in results.csv: ``rounds``, ``final_clean_acc``, ``final_asr``, ``max_asr``,
  ``final_asr.<trigger>``, ``max_asr.<trigger>``, ``det_precision``, ``det_recall``,
  ``det_fpr``, ``seconds``, ``wall_seconds``;
- ``summary.<key>``: the run's summary.json, nested tables flattened to dotted keys
  (``summary.initial.clean_acc``, ``summary.plugins.watermark.verified``, ...).

A figure that is undefined (no trigger, nothing rejected) or not there (the cell did not
finish) is NaN. Per-round figures are in each cell's ``run_dir`` (metrics.jsonl).
Cells with an identical scenario share a digest and a run, so their figures repeat.
pandas is needed only here: it is imported on call, with a clear error if missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsec.bench.directory import cell_dir, read_manifest, read_status
from fedsec.bench.records import collect
from fedsec.bench.spec import SweepError

SWEEP_COLUMNS = {
    "cell": "the cell's digest (Scenario.digest()); its files are cells/<cell>/",
    "aggregator": "the aggregator entry's label",
    "attack": "the attack entry's label ('none' or its label: the no-attack baseline)",
    "malicious_fraction": "fraction of clients that attack (axis value, or the base scenario's)",
    "num_malicious": "attackers in the cell: partitions [0, num_malicious)",
    "alpha": "data.alpha, the Dirichlet concentration",
    "seed": "run.seed",
    "status": "done | failed | incomplete (interrupted) | pending (never started)",
    "error": "first line of a failed cell's error; the traceback is in cells/<cell>/error.txt",
    "run_dir": "the cell's run directory (metrics.jsonl, summary.json, model), when done",
    "rounds": "federated rounds run",
    "final_clean_acc": "clean test accuracy after the last round",
    "final_asr": "attack success rate after the last round, highest over the cell's triggers",
    "max_asr": "highest attack success rate over the rounds and triggers",
    "det_precision": "detection precision (rejected clients that attacked), mean over rounds",
    "det_recall": "detection recall (attackers rejected), mean over rounds",
    "det_fpr": "detection false-positive rate (honest clients rejected), mean over rounds",
    "seconds": "the federation's seconds (summary.json)",
    "wall_seconds": "the cell's wall-clock seconds, setup included (status.json)",
}
"""The fixed columns; besides them: one per ``vary`` key, ``final_asr.<trigger>`` and
``max_asr.<trigger>`` per trigger, and ``summary.<dotted key>``."""


def _pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ImportError("fedsec.load_sweep returns a pandas DataFrame and pandas is not installed: "
                          "pip install 'fedsec[pandas]' (or pip install pandas)") from None
    return pandas


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one level with dotted keys; lists and scalars are kept as they are, and an
    empty dict gives no column (a run without triggers has no ``asr.*``, not an ``asr`` of {})."""
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _summary(run_dir: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def load_results(directory: str | Path) -> Any:
    """The sweep directory ``directory`` (written by ``fedsec bench``) as a pandas DataFrame,
    one row per cell in sweep order; columns in :data:`SWEEP_COLUMNS` and the module docstring.

    Reads the cells' files alone (like ``fedsec report``), so it works on a sweep that is still
    running or was interrupted: unfinished cells have NaN figures.
    """
    pd = _pandas()
    out = Path(directory)
    if out.is_file():
        raise SweepError(f"{out}: a file; fedsec.load_sweep reads a sweep directory written by "
                         "`fedsec bench` (to parse a sweep file, use fedsec.bench.load_sweep)")
    if not out.is_dir():
        raise SweepError(f"{out}: no such sweep directory")
    manifest = read_manifest(out)
    _, records = collect(out)
    vary = list(manifest.get("vary", []))
    axis = ["aggregator", "attack", "malicious_fraction", "num_malicious", "alpha", *vary, "seed"]
    rows = []
    summaries: dict[str, dict[str, Any]] = {}
    for r in records:
        d = cell_dir(out, r["digest"])
        done = r["status"] == "done"
        if r["digest"] not in summaries:
            summaries[r["digest"]] = flatten(_summary(d / "run"), "summary.") if done else {}
        row = {"cell": r["digest"], **{k: r.get(k) for k in axis}, "status": r["status"],
               "error": r.get("error"), "run_dir": str((d / "run").resolve()) if done else None}
        row.update({k: v for k, v in r.items() if k not in row and k != "digest" and not k.startswith("curve_")})
        row["wall_seconds"] = read_status(d).get("wall_seconds")
        row.update(summaries[r["digest"]])
        rows.append(row)
    triggers = sorted({k for row in rows for k in row if k.startswith(("final_asr.", "max_asr."))})
    order = ["cell", *axis, "status", "error", "run_dir", "rounds", "final_clean_acc", "final_asr", "max_asr",
             *triggers, "det_precision", "det_recall", "det_fpr", "seconds", "wall_seconds"]
    order += list(dict.fromkeys(k for row in rows for k in row if k not in order))  # summary.*, in file order
    df = pd.DataFrame(rows, columns=order)
    for c in ("final_clean_acc", "final_asr", "max_asr", *triggers, "det_precision", "det_recall", "det_fpr",
              "seconds", "wall_seconds", "malicious_fraction", "alpha"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    for c in ("num_malicious", "rounds"):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("Int64")
    df.attrs.update({k: manifest.get(k) for k in ("name", "description", "aggregators", "attacks", "vary")})
    return df

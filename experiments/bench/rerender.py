"""Re-render a shipped sweep's results.md, results.csv and heatmaps from its results.csv alone.

The reference results in ``experiments/bench/results/`` keep results.csv but not the cells'
run directories (hundreds of models), so ``fedsec report`` cannot rebuild them; this script
reads the per-cell rows of results.csv back into the records ``fedsec report`` would have
collected and writes the same tables and heatmaps (curves need the per-round figures, so none)::

    python experiments/bench/rerender.py experiments/bench/results/byzantine_digits \\
        experiments/bench/byzantine_digits.toml

The figures are those of the CSV: no number changes, only the presentation (worst-case
rows and columns, labelled heatmaps).
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from fedsec.bench import results_csv, results_md, write_plots
from fedsec.results import atomic_write

_INT = ("num_malicious", "seed", "rounds")
_TEXT = ("cell", "aggregator", "attack", "status", "error", "worst_of")


def _value(column: str, text: str) -> Any:
    if text == "":
        return None
    if column in _TEXT:
        return text
    if column in _INT:
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text  # a vary key holding a string (e.g. data.dataset)


def records_from_csv(text: str) -> list[dict[str, Any]]:
    """The per-cell rows of results.csv as records (worst-case summary rows are dropped)."""
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["status"] != "worst-case"]
    out = []
    for r in rows:
        rec = {k: _value(k, v) for k, v in r.items() if k not in ("cell", "worst_of")}
        out.append({**rec, "digest": r["cell"]})
    return out


def manifest_of(records: list[dict[str, Any]], sweep_file: Path, header: list[str]) -> dict[str, Any]:
    raw = tomllib.loads(sweep_file.read_text())
    fixed = {"cell", "aggregator", "attack", "malicious_fraction", "num_malicious", "alpha", "seed", "status"}
    vary = header[header.index("alpha") + 1: header.index("seed")]
    assert not fixed & set(vary), vary
    return {"name": raw.get("name", sweep_file.stem), "description": raw.get("description", ""),
            "aggregators": list(dict.fromkeys(r["aggregator"] for r in records)),
            "attacks": list(dict.fromkeys(r["attack"] for r in records)), "vary": vary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="folder holding the shipped results.csv")
    ap.add_argument("sweep", type=Path, help="the sweep file (for its name and description)")
    args = ap.parse_args()
    text = (args.results / "results.csv").read_text()
    records = records_from_csv(text)
    manifest = manifest_of(records, args.sweep, next(csv.reader(io.StringIO(text))))
    new_csv = results_csv(manifest, records)
    # the per-cell rows come back unchanged, field for field (worst_of is new and empty for them)
    old_rows, new_rows = ([r for r in csv.DictReader(io.StringIO(t)) if r["status"] != "worst-case"]
                          for t in (text, new_csv))
    assert [{k: r[k] for k in old_rows[0] if k != "worst_of"} for r in new_rows] == [
        {k: v for k, v in r.items() if k != "worst_of"} for r in old_rows], "cell rows changed"
    atomic_write(args.results / "results.csv", new_csv)
    atomic_write(args.results / "results.md", results_md(manifest, records))
    for old in args.results.glob("heatmap_*.png"):
        old.unlink()
    with tempfile.TemporaryDirectory() as tmp:
        for p in write_plots(manifest, records, Path(tmp)):
            shutil.copy(p, args.results / p.name)
            print(args.results / p.name)


if __name__ == "__main__":
    main()

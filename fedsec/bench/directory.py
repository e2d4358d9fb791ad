"""The sweep directory: where each cell's files live, what its status says, the manifest.

::

    sweep.toml     the sweep file as given        cells.json   the cells and their axis values
    cells/<digest>/status.json, scenario.toml, run/ (the run directory), error.txt (failed)
    results.csv    one row per cell               results.md   mean +- std over seeds, per metric
    plots/         heatmaps (attack x aggregator) and per-attack accuracy / ASR curves

Only the runner writes cells; the report reads them, so both go through here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedsec.bench.spec import Sweep, SweepError
from fedsec.results import atomic_write


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


def write_status(d: Path, status: dict[str, Any]) -> None:
    atomic_write(d / "status.json", json.dumps(status, indent=2) + "\n")


def mark_failed(d: Path, error: str, tb: str) -> dict[str, Any]:
    st = {**read_status(d), "status": "failed", "error": error.splitlines()[0][:500] if error else "?"}
    atomic_write(d / "error.txt", tb)
    write_status(d, st)
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


def read_manifest(out: Path) -> dict[str, Any]:
    """cells.json of a sweep directory; SweepError when there is none."""
    mf = Path(out) / "cells.json"
    if not mf.is_file():
        raise SweepError(f"{out}: not a sweep directory (no cells.json)")
    return json.loads(mf.read_text())

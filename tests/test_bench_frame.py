"""``fedsec.load_sweep(dir)``: a real sweep directory as a DataFrame, one row per cell."""

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import fedsec
from fedsec.bench import SWEEP_COLUMNS, SweepError, load_results, load_sweep, run_sweep

pd = pytest.importorskip("pandas")
QUICK = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.toml"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("frame")
    # mnist is not under this data.root: those cells fail when they load their data
    (tmp / "s.toml").write_text(
        f'base = "{QUICK}"\n'
        f'set = {{"server.rounds" = 2, "data.num_clients" = 4, "client.epochs" = 1, '
        f'"data.root" = "{tmp / "nodata"}"}}\n'
        'aggregators = ["mean", "median"]\nattacks = ["none", "badnets"]\nmalicious_fraction = 0.25\n'
        'seeds = [0]\nvary = {"data.dataset" = ["digits", "mnist"]}\n')
    out = tmp / "out"
    res = run_sweep(load_sweep(tmp / "s.toml"), out, jobs=1)
    assert (res.total, res.done, len(res.failed)) == (8, 4, 4)
    return out


def test_one_row_per_cell_with_the_documented_columns(sweep_dir):
    df = fedsec.load_sweep(sweep_dir)
    cells = json.loads((sweep_dir / "cells.json").read_text())["cells"]
    assert list(df["cell"]) == [c["digest"] for c in cells]
    assert list(zip(df["aggregator"], df["attack"], df["data.dataset"])) == [
        (c["aggregator"], c["attack"], c["data.dataset"]) for c in cells]
    fixed = [c for c in SWEEP_COLUMNS]
    assert set(fixed) <= set(df.columns)
    assert list(df.columns[:8]) == ["cell", "aggregator", "attack", "malicious_fraction", "num_malicious",
                                    "alpha", "data.dataset", "seed"]
    assert {"final_asr.badnets", "max_asr.badnets", "summary.initial.clean_acc",
            "summary.final_asr.badnets"} <= set(df.columns)
    assert not any(c.startswith("curve_") for c in df.columns)  # per-round figures: run_dir
    for c in ("final_clean_acc", "final_asr", "det_recall", "seconds", "alpha"):
        assert df[c].dtype == "float64", c
    assert str(df["rounds"].dtype) == "Int64" and str(df["num_malicious"].dtype) == "Int64"
    assert df.attrs["aggregators"] == ["mean", "median"] and df.attrs["vary"] == ["data.dataset"]


def test_figures_match_the_cells_files_and_results_csv(sweep_dir):
    df = load_results(sweep_dir)
    with (sweep_dir / "results.csv").open() as f:
        by_cell = {r["cell"]: r for r in csv.DictReader(f) if r["cell"]}
    done = df[df["status"] == "done"]
    assert list(done["data.dataset"]) == ["digits"] * 4
    for _, row in done.iterrows():
        run = Path(row["run_dir"])
        rounds = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        summary = json.loads((run / "summary.json").read_text())
        assert row["rounds"] == 2 and row["final_clean_acc"] == rounds[-1]["clean_acc"]
        assert row["summary.initial.clean_acc"] == summary["initial"]["clean_acc"]
        assert math.isclose(row["final_clean_acc"], float(by_cell[row["cell"]]["final_clean_acc"]), rel_tol=1e-5)
        if row["attack"] == "badnets":
            assert row["max_asr.badnets"] == max(r["asr"]["badnets"] for r in rounds)
            assert row["num_malicious"] == 1
        else:
            assert math.isnan(row["final_asr"]) and row["num_malicious"] == 0  # no trigger: NaN
        assert row["wall_seconds"] > 0
    failed = df[df["status"] == "failed"]
    assert list(failed["data.dataset"]) == ["mnist"] * 4
    assert failed["final_clean_acc"].isna().all() and failed["run_dir"].isna().all()
    assert all("data.root" in e for e in failed["error"])


def test_a_sweep_file_or_a_missing_directory_is_refused_with_a_pointer(tmp_path, sweep_dir):
    with pytest.raises(SweepError, match="fedsec.bench.load_sweep"):
        fedsec.load_sweep(sweep_dir / "sweep.toml")
    with pytest.raises(SweepError, match="no such sweep directory"):
        fedsec.load_sweep(tmp_path / "nope")
    with pytest.raises(SweepError, match="not a sweep directory"):
        fedsec.load_sweep(tmp_path)


def test_without_pandas_the_error_says_how_to_install_it(sweep_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'fedsec\[pandas\]'"):
        fedsec.load_sweep(sweep_dir)


def test_import_fedsec_does_not_import_pandas():
    code = "import sys, fedsec, fedsec.bench; fedsec.load_sweep; print('pandas' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"

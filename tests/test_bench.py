"""``fedsec bench`` / ``fedsec report``: sweep files, cells, resumption, results tables."""

import csv
import json
import math
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsec.bench import SweepError, load_sweep, parse_sweep, run_sweep
from fedsec.cli import app

runner = CliRunner()
QUICK = str(Path(__file__).resolve().parents[1] / "experiments" / "quickstart.toml")
TINY = {"server.rounds": 2, "data.num_clients": 4, "client.epochs": 1}


def _sweep_file(tmp_path: Path, body: str, name: str = "sweep.toml") -> Path:
    p = tmp_path / name
    p.write_text(f'base = "{QUICK}"\n' + body)
    return p


def _inline(d: dict) -> str:
    return "{" + ", ".join(f'"{k}" = {json.dumps(v)}' for k, v in d.items()) + "}"


def _rows(path: Path) -> list[dict[str, str]]:
    """results.csv's rows of cells (the worst-case summary rows follow them)."""
    with path.open() as f:
        return [r for r in csv.DictReader(f) if r["status"] != "worst-case"]


def _metrics(out: Path, digest: str) -> list[dict]:
    lines = (out / "cells" / digest / "run" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _close(text: str, value: float) -> bool:
    return math.isclose(float(text), value, rel_tol=1e-5, abs_tol=1e-9)


# -- the sweep file ----------------------------------------------------------------------------

def test_grid_maps_axes_to_scenario_fields():
    sw = parse_sweep({
        "base": {"data": {"num_clients": 10}, "server": {"rounds": 1}},
        "aggregators": ["mean", {"name": "krum", "params": {"f": "$f"}, "label": "krum-f"}],
        "attacks": ["none", {"behaviour": "badnets", "params": {"target": 3}, "start_round": 2}],
        "malicious_fraction": [0.2, 0.25],
        "alpha": [0.1, 1.0],
        "seeds": [0, 7],
    })
    assert len(sw.cells) == 2 * 2 * 2 * 2 * 2
    c = next(c for c in sw.cells if c.axes == {"aggregator": "krum-f", "attack": "badnets",
                                                 "malicious_fraction": 0.25, "alpha": 0.1, "seed": 7})
    s = c.scenario
    # 0.25 x 10 = 2.5 rounds half up to 3 attackers: partitions [0, 3)
    assert [a.partitions for a in s.attack] == [[0, 1, 2]] and c.num_malicious == 3
    assert s.attack[0].params == {"target": 3} and s.attack[0].start_round == 2
    assert s.server.aggregator == "krum" and s.server.aggregator_params == {"f": 3}
    assert (s.data.alpha, s.run.seed, s.run.engine) == (0.1, 7, "inline")
    base = next(c for c in sw.cells if c.axes["attack"] == "none" and c.axes["aggregator"] == "krum-f"
                and c.axes["malicious_fraction"] == 0.2)
    assert base.scenario.attack == [] and base.num_malicious == 0
    assert base.scenario.server.aggregator_params == {"f": 2}  # "$f": the rule still assumes 2
    # mean ignores the fraction for the honest baseline: one federation for both fractions
    honest_mean = {c.digest for c in sw.cells if c.axes["attack"] == "none" and c.axes["aggregator"] == "mean"}
    assert len(honest_mean) == 4 and len(sw.unique()) == len(sw.cells) - 4


def test_cells_take_the_vectorized_path_unless_the_sweep_says_otherwise():
    raw = {"base": {"data": {"num_clients": 4}}, "aggregators": ["mean"]}
    assert all(c.scenario.run.vectorize for c in parse_sweep(raw).cells)
    off = parse_sweep({**raw, "set": {"run.vectorize": False}})
    assert not any(c.scenario.run.vectorize for c in off.cells)
    in_base = parse_sweep({**raw, "base": {"data": {"num_clients": 4}, "run": {"vectorize": False}}})
    assert not any(c.scenario.run.vectorize for c in in_base.cells)


def test_explicit_cells_are_subgrids_by_label():
    sw = parse_sweep({
        "base": {"data": {"num_clients": 10}},
        "aggregators": ["mean", "median", "krum"],
        "attacks": ["none", "badnets"],
        "malicious_fraction": 0.2,
        "seeds": [0, 1],
        "cells": [{"aggregator": "krum", "attack": "badnets", "seed": 1},
                  {"aggregator": ["mean", "median"], "attack": "none"}],
    })
    got = sorted((c.axes["aggregator"], c.axes["attack"], c.axes["seed"]) for c in sw.cells)
    assert got == [("krum", "badnets", 1), ("mean", "none", 0), ("mean", "none", 1),
                   ("median", "none", 0), ("median", "none", 1)]


@pytest.mark.parametrize("raw, message", [
    ({"base": {}, "seed": [0], "aggregator": ["mean"]},
     "sweep: unknown keys 'seed' (did you mean 'seeds'?), 'aggregator' (did you mean 'aggregators'?)"),
    ({"base": {}, "aggregators": [{"name": "krum", "parms": {}}]},
     "aggregators[0]: unknown key 'parms' (did you mean 'params'?)"),
    ({"base": {}, "aggregators": ["mean", "mean"]}, "aggregators[1]: label 'mean' already used"),
    ({"base": {}, "attacks": ["badnets"]}, "malicious_fraction: required"),
    ({"base": {}, "attacks": ["badnets"], "malicious_fraction": 1.5}, "malicious_fraction[0]: got 1.5"),
    ({"base": {}, "attacks": ["badnets"], "malicious_fraction": 0.01}, "rounds to 0 attackers"),
    ({"base": {}, "vary": {"run.seed": [1, 2]}}, "vary.run.seed: use the 'seeds' axis"),
    ({"base": {}, "seeds": [0], "cells": [{"sed": 0}]}, "cells[0]: unknown key 'sed'"),
    ({"base": {}, "seeds": [0], "cells": [{"seed": 3}]}, "cells[0].seed: got 3, expected one of [0]"),
    ({"base": {"server": {"rouns": 2}}}, "base: server.rouns: unknown key"),
    ({"base": {}, "set": {"server": {"rouns": 2}}}, "set: server.rouns: unknown key"),
])
def test_invalid_sweeps_are_rejected_naming_the_key(raw, message):
    with pytest.raises(SweepError) as e:
        parse_sweep(raw)
    assert message in str(e.value)


def test_every_cell_is_validated_before_anything_runs(tmp_path):
    sweep = _sweep_file(tmp_path, 'set = {"data.num_clients" = 4}\nseeds = [0, 1]\n'
                                  'aggregators = ["mean", {name = "krum", params = {ff = 1}}]\n')
    with pytest.raises(SweepError) as e:
        load_sweep(sweep)
    assert "2 invalid cell(s)" in str(e.value)
    assert "cell aggregator=krum seed=0: server.aggregator_params" in str(e.value)
    res = runner.invoke(app, ["bench", str(sweep), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "invalid sweep" in res.output
    assert not (tmp_path / "out").exists()


# -- running, resuming, reporting --------------------------------------------------------------

def test_sweep_end_to_end_resume_and_report(tmp_path):
    sweep = _sweep_file(tmp_path, "set = " + _inline(TINY) + "\n"
                        'aggregators = ["mean", "median"]\nattacks = ["none", "badnets"]\n'
                        "malicious_fraction = 0.25\nseeds = [0]\n")
    out = tmp_path / "out"
    res = runner.invoke(app, ["bench", str(sweep), "--jobs", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = _rows(out / "results.csv")
    assert [(r["aggregator"], r["attack"]) for r in rows] == [
        ("mean", "none"), ("mean", "badnets"), ("median", "none"), ("median", "badnets")]
    for r in rows:
        m = _metrics(out, r["cell"])
        assert r["status"] == "done" and r["rounds"] == "2" and len(m) == 2
        assert _close(r["final_clean_acc"], m[-1]["clean_acc"])
        assert r["num_malicious"] == ("1" if r["attack"] == "badnets" else "0")
        if r["attack"] == "badnets":
            assert _close(r["max_asr.badnets"], max(x["asr"]["badnets"] for x in m))
            assert _close(r["final_asr.badnets"], m[-1]["asr"]["badnets"])
            recalls = [x["detection"]["recall"] for x in m]
            assert _close(r["det_recall"], sum(recalls) / 2)
        else:
            assert r["max_asr.badnets"] == "" and r["det_recall"] == ""  # nobody attacked
        assert _close(r["seconds"], json.loads(
            (out / "cells" / r["cell"] / "run" / "summary.json").read_text())["seconds"])
    md = (out / "results.md").read_text()
    acc = {(r["attack"], r["aggregator"]): float(r["final_clean_acc"]) for r in rows}
    assert (f"| badnets | {acc['badnets', 'mean']:.3f} | {acc['badnets', 'median']:.3f} |" in md)
    assert (f"| none | {acc['none', 'mean']:.3f} | {acc['none', 'median']:.3f} |" in md)
    asr = {r["aggregator"]: float(r["max_asr"]) for r in rows if r["attack"] == "badnets"}
    assert f"| badnets | {asr['mean']:.3f} | {asr['median']:.3f} |" in md
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"heatmap_final_clean_acc.png", "heatmap_final_asr.png", "heatmap_max_asr.png", "curves_none.png",
            "curves_badnets.png"} <= plots

    # A process killed mid-run leaves status "running" and no summary.json.
    victim = rows[3]["cell"]
    before = _metrics(out, victim)
    vdir = out / "cells" / victim
    (vdir / "run" / "summary.json").unlink()
    st = json.loads((vdir / "status.json").read_text())
    (vdir / "status.json").write_text(json.dumps({**st, "status": "running"}))
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    assert [r["status"] for r in _rows(out / "results.csv")] == ["done", "done", "done", "incomplete"]
    stamps = {r["cell"]: (out / "cells" / r["cell"] / "run" / "metrics.jsonl").stat().st_mtime_ns
              for r in rows[:3]}

    res = runner.invoke(app, ["bench", str(sweep), "--jobs", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "3 cell(s) already finished: skipped" in res.output
    assert {c: (out / "cells" / c / "run" / "metrics.jsonl").stat().st_mtime_ns for c in stamps} == stamps
    after = _metrics(out, victim)
    assert (vdir / "run" / "summary.json").is_file()
    assert json.loads((vdir / "status.json").read_text())["status"] == "done"
    # same scenario, same seed: the rerun reproduces the figures
    assert [(x["clean_acc"], x["asr"]) for x in after] == [(x["clean_acc"], x["asr"]) for x in before]

    # `fedsec report` rebuilds identical tables from the cells' files alone
    csv_bytes, md_text = (out / "results.csv").read_bytes(), (out / "results.md").read_text()
    for p in ("results.csv", "results.md"):
        (out / p).unlink()
    shutil.rmtree(out / "plots")
    res = runner.invoke(app, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "results.csv").read_bytes() == csv_bytes
    assert (out / "results.md").read_text() == md_text
    assert {p.name for p in (out / "plots").iterdir()} == plots


def test_failing_cell_records_error_and_the_sweep_goes_on(tmp_path):
    # MNIST is not on disk under this data.root: that cell fails when it loads its data.
    sweep = _sweep_file(tmp_path, "set = " + _inline({**TINY, "data.root": str(tmp_path / "nodata")}) + "\n"
                        'vary = {"data.dataset" = ["mnist", "digits"]}\n')
    out = tmp_path / "out"
    res = runner.invoke(app, ["bench", str(sweep), "--out", str(out)])
    assert res.exit_code == 1
    assert "1 failed" in res.output
    bad, good = _rows(out / "results.csv")
    assert (bad["data.dataset"], bad["status"], good["data.dataset"], good["status"]) == (
        "mnist", "failed", "digits", "done")
    # the data loader's message (its wording is the data module's): names the dataset and data.root
    assert "mnist" in bad["error"].lower() and "data.root" in bad["error"]
    tb = (out / "cells" / bad["cell"] / "error.txt").read_text()
    assert tb.startswith("Traceback") and "data.root" in tb
    assert "## failed cells" in (out / "results.md").read_text()
    good_stamp = (out / "cells" / good["cell"] / "run" / "metrics.jsonl").stat().st_mtime_ns
    bad_status = out / "cells" / bad["cell"] / "status.json"
    os.utime(bad_status, ns=(1, 1))

    res = runner.invoke(app, ["bench", str(sweep), "--out", str(out)])
    assert res.exit_code == 1 and "1 cell(s) already finished: skipped" in res.output
    assert (out / "cells" / good["cell"] / "run" / "metrics.jsonl").stat().st_mtime_ns == good_stamp
    assert bad_status.stat().st_mtime_ns > 1  # the failed cell was tried again


@pytest.mark.slow
def test_ray_tasks_run_cells_concurrently(tmp_path):
    sw = load_sweep(_sweep_file(tmp_path, "set = " + _inline(TINY) + "\n"
                                'aggregators = ["mean", "median"]\nseeds = [0, 1]\n'))
    out = tmp_path / "out"
    res = run_sweep(sw, out, jobs=2)
    assert (res.total, res.done, res.failed) == (4, 4, [])
    pids = {json.loads((out / "cells" / c.digest / "status.json").read_text())["pid"] for c in sw.cells}
    assert os.getpid() not in pids  # the cells ran in Ray workers
    seq = run_sweep(sw, tmp_path / "seq", jobs=1)
    assert seq.done == 4
    a, b = (_rows(d / "results.csv") for d in (out, tmp_path / "seq"))
    assert [r["final_clean_acc"] for r in a] == [r["final_clean_acc"] for r in b]

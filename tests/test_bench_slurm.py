"""``fedsec bench --backend slurm``: a sweep as one submitit job array, run here with
submitit's local executor (``--slurm cluster=local``: the array's tasks as processes on
this machine), the same cells, directory and report as the other backends."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsec.cli import app

pytest.importorskip("submitit")
runner = CliRunner()
QUICK = str(Path(__file__).resolve().parents[1] / "experiments" / "quickstart.toml")
SWEEP = f'''name = "tiny"
base = "{QUICK}"
aggregators = ["mean", "median"]
attacks = ["none"]
seeds = [0]
[set]
"server.rounds" = 1
"data.num_clients" = 4
"client.epochs" = 1
"run.engine" = "inline"
'''


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as f:
        return [r for r in csv.DictReader(f) if r["status"] != "worst-case"]


@pytest.mark.slow  # ~40-60 s on 2 cores: each array task is a fresh Python that imports torch
def test_sweep_on_the_local_submitit_executor_matches_in_process(tmp_path):
    sweep = tmp_path / "tiny.toml"
    sweep.write_text(SWEEP)
    out_s, out_l = tmp_path / "slurm", tmp_path / "local"
    r = runner.invoke(app, ["bench", str(sweep), "--out", str(out_s), "--backend", "slurm",
                            "--slurm", "cluster=local", "--slurm", "timeout_min=10"])
    assert r.exit_code == 0, r.output
    jobs = json.loads((out_s / "slurm" / "jobs.json").read_text())
    assert len(jobs) == 2 and all("_" in j for j in jobs.values())  # one array: <job>_<task>
    assert len({j.split("_")[0] for j in jobs.values()}) == 1
    r = runner.invoke(app, ["bench", str(sweep), "--out", str(out_l)])
    assert r.exit_code == 0, r.output
    a, b = _rows(out_s), _rows(out_l)
    assert [x["status"] for x in a] == ["done", "done"]
    key = lambda x: x["aggregator"]  # noqa: E731
    assert [(x["aggregator"], x["final_clean_acc"]) for x in sorted(a, key=key)] == \
           [(x["aggregator"], x["final_clean_acc"]) for x in sorted(b, key=key)]
    # rerunning resumes: nothing left to submit
    r = runner.invoke(app, ["bench", str(sweep), "--out", str(out_s), "--backend", "slurm", "--slurm", "cluster=local"])
    assert r.exit_code == 0 and "2 cell(s) already finished" in r.output, r.output


def test_bad_slurm_options_are_named(tmp_path):
    sweep = tmp_path / "tiny.toml"
    sweep.write_text(SWEEP)
    r = runner.invoke(app, ["bench", str(sweep), "--out", str(tmp_path / "o"), "--backend", "slurm",
                            "--slurm", "cluster=moon"])
    assert r.exit_code == 2 and "--slurm cluster: got 'moon', expected one of ['slurm', 'local', 'debug']" in r.output
    r = runner.invoke(app, ["bench", str(sweep), "--out", str(tmp_path / "o"), "--backend", "pbs"])
    assert r.exit_code == 2 and "backend: got 'pbs', expected 'local' or 'slurm'" in r.output

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
    assert len(jobs) == 2 and len(set(jobs.values())) == 2  # one task per cell (local ids: process ids)
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


def test_slurm_options_make_one_job_array(tmp_path, monkeypatch):
    """The sbatch script submitit writes for our options (a stand-in ``srun`` on PATH: no cluster
    here): partition, time limit, GPUs, and one array of the cells with the parallelism cap."""
    from fedsec.bench import parse_sweep
    from fedsec.bench.slurm import executor

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:" + __import__("os").environ["PATH"])
    sw = parse_sweep({"base": {"server": {"rounds": 1}, "run": {"device": "cuda", "threads": 2}},
                      "aggregators": ["mean", "median", "krum"], "attacks": ["none"], "seeds": [0]})
    ex = executor(tmp_path / "%j", {"partition": "gpu", "array_parallelism": 2, "timeout_min": 30}, sw.cells)
    ex._executor.parameters["map_count"] = len(sw.cells)  # what map_array sets for an array of 3
    text = ex._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    for line in ["#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=2", "#SBATCH --array=0-2%2", "#SBATCH --job-name=fedsec-bench"]:
        assert line in text, text

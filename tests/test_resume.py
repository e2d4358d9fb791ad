"""Checkpoint and resume: a resumed run ends exactly where the uninterrupted one does.

Every random draw is seeded from (seed, purpose, round, partition id), so the
checkpoint holds only the global model, the round and the stateful
components (FoolsGold's history, centered clipping's momentum). The compared
metrics exclude the wall-clock fields (``*seconds``), which differ between any
two runs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedsec import load_scenario, run

REPO = Path(__file__).resolve().parents[1]
FEDSEC = Path(sys.executable).parent / "fedsec"


def _scenario(out: Path, rounds: int, **extra: str):
    overrides = ['run.engine="inline"', "data.num_clients=6", f"server.rounds={rounds}", "client.epochs=1",
                 f'run.output="{out}"', *[f"{k}={v}" for k, v in extra.items()]]
    return load_scenario(REPO / "experiments/quickstart.toml", overrides)


def _rows(run_dir: Path) -> list[dict]:
    strip = lambda r: {k: v for k, v in r.items() if "seconds" not in k}  # noqa: E731
    return [strip(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("rule", ["foolsgold", "centered_clip"])
def test_resume_after_a_stop_is_bitwise_identical(tmp_path, rule):
    """Stateful rules: a run stopped after round 2 and resumed equals the 4-round run."""
    full = run(_scenario(tmp_path / "a", 4, **{"server.aggregator": f'"{rule}"'}))
    s4 = _scenario(tmp_path / "b", 4, **{"server.aggregator": f'"{rule}"'})
    part = run(s4.replace(**{"server.rounds": 2}))
    (part.run_dir / "scenario.toml").write_text(s4.to_toml())  # as if the 4-round run had died
    resumed = run(None, resume=part.run_dir)
    assert _same_model(full.model.state_dict(), resumed.model.state_dict())
    assert _rows(full.run_dir) == _rows(part.run_dir)
    summary = json.loads((part.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 4


def test_resume_drops_rounds_written_after_the_checkpoint(tmp_path):
    """A metrics line without its checkpoint (killed in between) is recomputed, not kept twice."""
    s = _scenario(tmp_path, 3, **{"run.checkpoint_every": "2"})
    full = run(s)
    first_rows = _rows(full.run_dir)
    # checkpoint_every = 2 wrote rounds 2 and 3 (the last); roll back to the round-2 checkpoint
    # by replaying: resume must cut metrics.jsonl to the checkpoint's round and redo the rest.
    from fedsec.federation import checkpointing

    meta = checkpointing.read_metadata(full.run_dir / checkpointing.CHECKPOINT)
    assert meta["round"] == "3"
    part = run(s.replace(**{"server.rounds": 2, "run.output": str(tmp_path / "p")}))
    with open(part.run_dir / "metrics.jsonl", "a") as f:  # round 3 written, then killed
        f.write(json.dumps({"round": 3, "clean_acc": 0.0}) + "\n")
    (part.run_dir / "scenario.toml").write_text(s.replace(**{"run.output": str(tmp_path / "p")}).to_toml())
    resumed = run(None, resume=part.run_dir)
    assert [r["round"] for r in _rows(part.run_dir)] == [1, 2, 3]
    assert _rows(part.run_dir) == first_rows
    assert _same_model(full.model.state_dict(), resumed.model.state_dict())


def _kill_at_round(cmd: list[str], metrics_glob: Path, kill_after: int, timeout: float = 300) -> Path:
    """Start ``cmd``; SIGKILL it once metrics.jsonl has ``kill_after`` lines; return the run dir."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            dirs = list(metrics_glob.parent.glob(metrics_glob.name))
            if dirs and (dirs[0] / "metrics.jsonl").exists():
                if len((dirs[0] / "metrics.jsonl").read_text().splitlines()) >= kill_after:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    return dirs[0]
            if proc.poll() is not None:
                raise AssertionError(f"the run ended (rc {proc.returncode}) before round {kill_after}")
            time.sleep(0.05)
        raise AssertionError("timed out waiting for the run to reach the kill round")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _kill_and_resume(tmp_path: Path, seed: int, engine: str = "inline") -> None:
    rounds = 5
    kill_after = random.Random(seed).randint(1, rounds - 1)
    sets = ["data.num_clients=6", f"server.rounds={rounds}", "client.epochs=1", 'server.aggregator="foolsgold"',
            "run.checkpoint_every=1"]
    base = [str(FEDSEC), "run", str(REPO / "experiments/quickstart.toml"), "--engine", engine,
            *[a for s in sets for a in ("--set", s)]]
    ref = subprocess.run([*base, "--output", str(tmp_path / "ref")], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    (ref_dir,) = (tmp_path / "ref").glob("quickstart-*")
    run_dir = _kill_at_round([*base, "--output", str(tmp_path / "k")], tmp_path / "k" / "quickstart-*", kill_after)
    res = subprocess.run([str(FEDSEC), "run", "--resume", str(run_dir)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    from fedsec.checkpoint import load_state

    a = load_state(ref_dir / "model.safetensors")
    b = load_state(run_dir / "model.safetensors")
    assert _same_model(a, b), f"killed after round {kill_after}: final models differ"
    assert _rows(ref_dir) == _rows(run_dir)


def test_kill_9_then_resume_cli(tmp_path):
    _kill_and_resume(tmp_path, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4, 5])
def test_kill_9_then_resume_many(tmp_path, seed):
    _kill_and_resume(tmp_path, seed=seed)


@pytest.mark.slow
def test_kill_9_then_resume_ray(tmp_path):
    _kill_and_resume(tmp_path, seed=6, engine="ray")


def test_a_killed_bench_cell_resumes_mid_run(tmp_path):
    """`fedsec bench` reruns an interrupted cell from its checkpoint, not from round 1."""
    from fedsec.bench.runner import run_cell
    from fedsec.checkpoint import load_state

    s = _scenario(tmp_path / "unused", 4, **{"server.aggregator": '"foolsgold"', "run.checkpoint_every": "1"})
    text = s.to_toml()
    ref = run_cell(text, str(tmp_path / "ref"))
    assert ref["status"] == "done"
    cell = tmp_path / "cell"
    code = ("import sys; from fedsec.bench.runner import run_cell; "
            f"run_cell(open({str(tmp_path / 's.toml')!r}).read(), {str(cell)!r})")
    (tmp_path / "s.toml").write_text(text)
    _kill_at_round([sys.executable, "-c", code], cell / "attempt" / "quickstart-*", 2)
    (attempt,) = (cell / "attempt").glob("quickstart-*")
    assert (attempt / "checkpoint.safetensors").is_file()
    first = (attempt / "metrics.jsonl").read_text().splitlines()[0]
    status = run_cell(text, str(cell))
    assert status["status"] == "done"
    a = load_state(tmp_path / "ref" / "run" / "model.safetensors")
    b = load_state(cell / "run" / "model.safetensors")
    assert _same_model(a, b)
    assert _rows(tmp_path / "ref" / "run") == _rows(cell / "run")
    # resumed, not restarted: round 1's line (with its wall-clock figures) is the original one
    assert (cell / "run" / "metrics.jsonl").read_text().splitlines()[0] == first

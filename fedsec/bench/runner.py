"""Running a sweep: each unfinished cell as an independent federation, in process or as Ray tasks.

A cell runs into ``cells/<digest>/`` (:mod:`fedsec.bench.directory`), so rerunning a
sweep skips the cells whose run finished and reruns the failed or interrupted ones;
cells with an identical scenario run once. Several cells run at once as Ray tasks
(``jobs > 1``: a local Ray instance, or the cluster at ``$RAY_ADDRESS``), or one after
another in this process. The report is rewritten at the end, even after an interruption.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import tomllib
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsec.bench.directory import cell_dir, is_done, mark_failed, write_manifest, write_status
from fedsec.bench.report import write_report
from fedsec.bench.spec import Cell, Sweep, SweepError
from fedsec.results import atomic_write
from fedsec.scenario import Scenario


def run_cell(toml_text: str, directory: str) -> dict[str, Any]:
    """Run one cell's federation (inline engine) into ``directory``; never raises for a
    failing federation: the traceback goes to error.txt and the status says ``failed``.

    Used in-process (``jobs = 1``) and as the body of the Ray task.
    """
    import logging

    import torch

    from fedsec.api import run as run_federation

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    s = Scenario.from_dict(tomllib.loads(toml_text))
    resume = resumable_attempt(d, s)
    for old in d.iterdir():  # a previous, failed or interrupted attempt
        if old.is_dir() and not (resume is not None and old == d / "attempt"):
            shutil.rmtree(old)
        elif old.name == "error.txt":
            old.unlink()
    status: dict[str, Any] = {"status": "running", "digest": s.digest(), "host": socket.gethostname(),
                              "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write(d / "scenario.toml", toml_text)
    write_status(d, status)
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    flwr_log.setLevel(logging.ERROR)  # Flower's per-run notices would drown the progress display
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        torch.set_num_threads(s.run.threads)
        # An interrupted cell continues from its last checkpoint (bitwise the same result).
        result = (run_federation(s, output=d / "attempt") if resume is None
                  else run_federation(None, resume=resume))
        os.replace(result.run_dir, d / "run")
        shutil.rmtree(d / "attempt", ignore_errors=True)
        status["status"] = "done"
    except Exception as e:
        atomic_write(d / "error.txt", traceback.format_exc())
        status.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0][:500])
    finally:
        torch.set_num_threads(threads)
        flwr_log.setLevel(level)
    status["wall_seconds"] = round(time.perf_counter() - t0, 3)
    write_status(d, status)
    return status



def resumable_attempt(d: Path, s: Scenario) -> Path | None:
    """The interrupted run of this very cell under ``d/attempt`` that has a checkpoint, if any."""
    from fedsec.federation.checkpointing import CHECKPOINT

    runs = [r for r in (d / "attempt").glob("*") if (r / CHECKPOINT).is_file()] if (d / "attempt").is_dir() else []
    if len(runs) != 1 or not (runs[0] / "scenario.toml").is_file():
        return None
    return runs[0] if (runs[0] / "scenario.toml").read_text() == s.to_toml() else None


@dataclass
class SweepOutcome:
    total: int
    skipped: int
    done: int
    failed: list[tuple[Cell, str]]


def run_sweep(sweep: Sweep, out: str | Path, *, jobs: int = 1,
              on_cell: Callable[[Cell, dict[str, Any]], None] | None = None,
              on_start: Callable[[int, int], None] | None = None,
              backend: str = "local", slurm: dict[str, Any] | None = None) -> SweepOutcome:
    """Run the cells not finished yet (``jobs`` at a time), then write the report.

    ``on_start(total, skipped)`` and ``on_cell(cell, status)`` drive a progress display.
    ``backend``: ``local`` (in process, or Ray tasks when ``jobs`` > 1) or ``slurm`` (one
    job array through submitit, options ``slurm``: fedsec.bench.slurm).
    """
    if backend not in ("local", "slurm"):
        raise SweepError(f"backend: got {backend!r}, expected 'local' or 'slurm'")
    if jobs < 1:
        raise SweepError(f"jobs: got {jobs!r}, expected an integer >= 1")
    out = Path(out)
    write_manifest(sweep, out)
    unique = sweep.unique()
    todo = [c for c in unique if not is_done(cell_dir(out, c.digest))]
    # Seed-major order: an interrupted sweep has whole tables for its first seeds.
    seed_rank = {s: i for i, s in enumerate(dict.fromkeys(c.axes["seed"] for c in sweep.cells))}
    todo.sort(key=lambda c: seed_rank[c.axes["seed"]])
    outcome = SweepOutcome(total=len(unique), skipped=len(unique) - len(todo), done=0, failed=[])
    if on_start:
        on_start(outcome.total, outcome.skipped)

    def finished(c: Cell, st: dict[str, Any]) -> None:
        if st.get("status") == "done":
            outcome.done += 1
        else:
            outcome.failed.append((c, st.get("error", "?")))
        if on_cell:
            on_cell(c, st)

    try:
        if backend == "slurm":
            from fedsec.bench.slurm import run_slurm

            run_slurm(todo, out, dict(slurm or {}), finished)
        elif jobs == 1 or len(todo) <= 1:
            for c in todo:
                finished(c, run_cell(c.scenario.to_toml(), str(cell_dir(out, c.digest))))
        else:
            _run_ray(todo, out, jobs, finished)
    finally:
        write_report(out)
    return outcome


def _run_ray(todo: list[Cell], out: Path, jobs: int, finished: Callable[[Cell, dict], None]) -> None:
    import ray

    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING",
                                  "log_to_driver": False}
        address = os.environ.get("RAY_ADDRESS", "")
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=jobs, **kwargs)
        except Exception as e:
            raise SweepError(f"could not start Ray ({type(e).__name__}: {e}); no cell was started: "
                             "retry, or run the cells one after another with jobs = 1") from None
        started = True
    task = ray.remote(run_cell)
    queue = list(todo)
    pending: dict[Any, Cell] = {}
    try:
        while queue or pending:
            while queue and len(pending) < jobs:
                c = queue.pop(0)
                r = c.scenario.run
                gpus = (r.num_gpus or 1.0) if r.device.startswith("cuda") else 0
                ref = task.options(num_cpus=r.threads, num_gpus=gpus, max_retries=0).remote(
                    c.scenario.to_toml(), str(cell_dir(out, c.digest).resolve()))
                pending[ref] = c
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                c = pending.pop(ref)
                try:
                    st = ray.get(ref)
                except Exception as e:  # the worker died (OOM, killed): the task could not say
                    st = mark_failed(cell_dir(out, c.digest), f"{type(e).__name__}: {e}",
                                      traceback.format_exc())
                finished(c, st)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


"""A sweep's cells as one SLURM job array (submitit), each cell one array task.

``fedsec bench SWEEP --backend slurm --slurm partition=gpu --slurm timeout_min=60``
submits every unfinished cell as a task of one ``sbatch --array`` job (submitit's
``map_array``): each task runs :func:`fedsec.bench.runner.run_cell` into
``cells/<digest>/``, exactly what ``--jobs`` does with Ray tasks, so the sweep
directory, the resumption (rerun the command: finished cells are skipped) and the
report are the same. The driver waits for the array and reports each cell as it ends;
Ctrl-C cancels the tasks not finished.

Options (``--slurm KEY=VALUE``): submitit's generic ones (``timeout_min``,
``mem_gb``, ``cpus_per_task``, ``gpus_per_node``, ``nodes``, ``tasks_per_node``,
``name``) as they are, any other SLURM one by its submitit name without the
``slurm_`` prefix (``partition``, ``array_parallelism``, ``account``, ``qos``,
``constraint``, ``exclude``, ...), and ``cluster``: ``slurm`` (default), ``local``
(submitit's local executor: tasks as processes on this machine, for a dry run of
the whole path without a cluster) or ``debug`` (in this process).

Requirements on a cluster: this Python environment (``sys.executable``) and the sweep
directory on a filesystem every node sees; ``pip install 'fedsec[slurm]'``.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedsec.bench.directory import cell_dir, mark_failed
from fedsec.bench.spec import Cell, SweepError

GENERIC = ("timeout_min", "mem_gb", "cpus_per_task", "gpus_per_node", "nodes", "tasks_per_node", "name",
           "stderr_to_stdout")
CLUSTERS = ("slurm", "local", "debug")


def executor(folder: Path, options: dict[str, Any], cells: list[Cell]):
    """A submitit AutoExecutor for ``cells`` with ``options`` (see the module docstring)."""
    try:
        import submitit
    except ImportError:
        raise SweepError("--backend slurm needs submitit: pip install 'fedsec[slurm]' (or pip install submitit)") from None
    opts = dict(options)
    cluster = str(opts.pop("cluster", "slurm"))
    if cluster not in CLUSTERS:
        raise SweepError(f"--slurm cluster: got {cluster!r}, expected one of {list(CLUSTERS)}")
    threads = max((c.scenario.run.threads for c in cells), default=1)
    gpus = max((1 if c.scenario.run.device.startswith("cuda") else 0 for c in cells), default=0)
    params: dict[str, Any] = {"timeout_min": 120, "cpus_per_task": threads, "name": "fedsec-bench"}
    if gpus:
        params["gpus_per_node"] = gpus
    for k, v in opts.items():
        params[k if k in GENERIC or k.startswith("slurm_") else f"slurm_{k}"] = v
    try:
        ex = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    except RuntimeError as e:  # submitit: 'Could not detect "srun", are you indeed on a slurm cluster?'
        raise SweepError(f"--backend slurm: {e} (run on a SLURM login node, or try the whole path on this "
                         "machine with --slurm cluster=local)") from None
    try:
        ex.update_parameters(**params)
    except (ValueError, TypeError) as e:
        raise SweepError(f"--slurm: {e}") from None
    return ex


def run_slurm(todo: list[Cell], out: Path, options: dict[str, Any],
              finished: Callable[[Cell, dict[str, Any]], None], *, poll: float = 5.0) -> None:
    """Submit ``todo`` as one job array, call ``finished(cell, status)`` as each task ends."""
    from fedsec.bench.runner import run_cell

    if not todo:
        return
    folder = out / "slurm" / "%j"
    ex = executor(folder, options, todo)
    dirs = [str(cell_dir(out, c.digest).resolve()) for c in todo]
    try:
        jobs = ex.map_array(run_cell, [c.scenario.to_toml() for c in todo], dirs)
    except Exception as e:  # sbatch missing or refused: nothing runs
        raise SweepError(f"could not submit the job array ({type(e).__name__}: {e}); no cell was started") from None
    (out / "slurm").mkdir(parents=True, exist_ok=True)
    (out / "slurm" / "jobs.json").write_text(json.dumps(
        {c.digest: j.job_id for c, j in zip(todo, jobs)}, indent=1) + "\n")
    pending = dict(zip(range(len(jobs)), zip(todo, jobs)))
    try:
        while pending:
            for k in [k for k, (_, j) in pending.items() if j.done()]:
                c, j = pending.pop(k)
                try:
                    st = j.result()
                except Exception as e:  # timeout, node failure, preemption: the task could not say
                    cell_dir(out, c.digest).mkdir(parents=True, exist_ok=True)
                    st = mark_failed(cell_dir(out, c.digest), f"{type(e).__name__}: {str(e)[:300]}",
                                     traceback.format_exc())
                finished(c, st)
            if pending:
                time.sleep(poll)
    except BaseException:
        for _, j in pending.values():
            try:
                j.cancel(check=False)
            except Exception:
                pass
        raise

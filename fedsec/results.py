"""The run directory (DESIGN.md contract): whole files atomic, metrics appended.

Whole files (scenario.toml, summary.json, env.json, models, plots) are written
to a temporary sibling, fsynced and renamed into place, so a reader or a crash
sees the old file or the new one, never half of one. ``metrics.jsonl`` grows by
one fsynced line per round: rewriting it whole each round cost O(rounds^2)
bytes (2.8 GB instead of 2.8 MB for 2000 rounds of 1.4 kB rows,
``experiments/benchmarks/metrics_io.py``).
A crash can leave a torn last line; :func:`read_metrics` drops it and says so,
and :meth:`RunWriter.resume` truncates the file back to its good lines.

Files get the permissions of ``open()`` under the process umask (0644 under
the usual 022), not the 0600 of a private temporary file, so a lab can share
a results folder.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

METRICS = "metrics.jsonl"


class ResultsError(OSError):
    """A run-directory file cannot be written or read; the message names the file and why."""


class TornLineWarning(UserWarning):
    """metrics.jsonl ended in a partial line (a crash mid-append); it was dropped."""


def _json_default(o: Any) -> Any:
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    # JSON has no NaN: write null so pandas and strict parsers read the file.
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), default=_json_default, allow_nan=False)


_umask_lock = threading.Lock()


def _umask() -> int:
    # Linux reports it without changing it; elsewhere set-and-restore under a lock.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    # A rename or a new file is durable only once its directory entry is.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the data itself was synced
    finally:
        os.close(fd)


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` atomically (temp sibling, fsync, rename), umask permissions.

    Raises :class:`ResultsError` naming ``path``; the previous file, if any, is untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise ResultsError(f"cannot write {str(path)!r}: {_why(e)}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ResultsError(f"cannot write {str(path)!r}: {_why(e)}") from e
        raise
    _fsync_dir(path.parent)


def write_safetensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A state dict as safetensors (CPU, contiguous), written atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, save(tensors, metadata=metadata))


def _scan_metrics(path: Path) -> tuple[list[dict[str, Any]], list[int], int]:
    """(rows, end byte offset of each row's line, bytes of a torn tail) of a metrics.jsonl."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], [], 0
    except OSError as e:
        raise ResultsError(f"cannot read {str(path)!r}: {_why(e)}") from e
    rows: list[dict[str, Any]] = []
    ends: list[int] = []
    pos = 0
    lines = data.split(b"\n")
    # The segment after the last newline is a line whose append never finished.
    complete, tail = lines[:-1], lines[-1]
    for i, line in enumerate(complete):
        start, pos = pos, pos + len(line) + 1
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, not an object")
        except ValueError as e:
            if i == len(complete) - 1 and not tail:
                return rows, ends, len(data) - start  # a garbled last line: torn as well
            raise ResultsError(f"{str(path)!r}: line {i + 1} is not a JSON object ({e}); "
                               "only a torn last line can be dropped, this file is corrupted") from None
        rows.append(row)
        ends.append(pos)
    return rows, ends, len(tail)


def _warn_torn(path: Path, nbytes: int, nrows: int) -> None:
    warnings.warn(f"{path}: dropped a torn last line ({nbytes} bytes, a crash during an append); "
                  f"{nrows} complete rounds kept", TornLineWarning, stacklevel=3)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` (a file, or the run directory holding it).

    A torn last line (a crash mid-append) is dropped with a :class:`TornLineWarning`;
    an unparseable line anywhere else is a :class:`ResultsError`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    rows, _, torn = _scan_metrics(path)
    if torn:
        _warn_torn(path, torn, len(rows))
    return rows


def environment(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What produced a run: versions, git commit, devices, host, command line."""
    import importlib.metadata as md
    import platform
    import socket
    import subprocess
    import sys

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    src = Path(__file__).resolve().parent.parent
    git: dict[str, Any] | None = None
    try:
        def run(*args: str) -> str:
            return subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()

        git = {"commit": run("rev-parse", "HEAD"),
               "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        pass  # not a git checkout (an installed wheel), or no git

    cuda = torch.cuda.is_available()
    env: dict[str, Any] = {
        "fedsec": version("fedsec"),
        "git": git,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {d: version(d) for d in ("torch", "flwr", "flwr-datasets", "ray", "numpy",
                                              "safetensors", "torchvision", "scikit-learn")},
        "cuda": {
            "available": cuda,
            "version": torch.version.cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        },
        "torch_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "argv": list(sys.argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    env.update(extra or {})
    return env


class RunWriter:
    """Writes ``runs/<name>-<timestamp>/``: scenario.toml, env.json, metrics.jsonl, summary.json, model.

    ``rows`` holds the rounds written so far as they read back from
    metrics.jsonl (NaN as None, tuples as lists), so a resumed writer and an
    uninterrupted one hold the same rows.
    """

    def __init__(self, root: str | Path, name: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(root) / f"{name}-{stamp}"
        path, i = base, 1
        while path.exists():
            path, i = Path(f"{base}-{i}"), i + 1
        try:
            path.mkdir(parents=True)
        except OSError as e:
            raise ResultsError(f"cannot create the run directory {str(path)!r}: {_why(e)}; "
                               "set run.output (or --output) to a writable directory") from e
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self._ends: list[int] = []  # byte offset after each row's line in metrics.jsonl

    @classmethod
    def resume(cls, path: str | Path) -> RunWriter:
        """Reopen an existing run directory; ``rows`` are its metrics.jsonl rows.

        A torn last line is dropped (:class:`TornLineWarning`) and the file
        truncated to its complete lines, so the next append starts a clean line.
        """
        path = Path(path)
        if not (path / "scenario.toml").is_file():
            raise ResultsError(f"{str(path)!r} is not a run directory (no scenario.toml)")
        self = cls.__new__(cls)
        self.path = path
        rows, ends, torn = _scan_metrics(path / METRICS)
        self.rows, self._ends = rows, ends
        if torn:
            self._truncate(ends[-1] if ends else 0)
            _warn_torn(path / METRICS, torn, len(rows))
        return self

    def _truncate(self, size: int) -> None:
        f = self.path / METRICS
        try:
            fd = os.open(f, os.O_WRONLY)
            try:
                os.ftruncate(fd, size)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise ResultsError(f"cannot truncate {str(f)!r}: {_why(e)}") from e

    def truncate_to_round(self, last_round: int) -> None:
        """Forget the rows after ``last_round`` (resuming from an earlier checkpoint)."""
        keep = next((i for i, r in enumerate(self.rows) if r.get("round", 0) > last_round), len(self.rows))
        if any(r.get("round", 0) <= last_round for r in self.rows[keep:]):
            raise ResultsError(f"{self.path / METRICS}: rounds are out of order; cannot cut at round {last_round}")
        if keep == len(self.rows):
            return
        self._truncate(self._ends[keep - 1] if keep else 0)
        del self.rows[keep:], self._ends[keep:]

    def write_scenario(self, toml_text: str) -> None:
        atomic_write(self.path / "scenario.toml", toml_text)

    def write_env(self, extra: dict[str, Any] | None = None) -> Path:
        """``env.json``: :func:`environment` plus ``extra`` (e.g. where clients and server train)."""
        out = self.path / "env.json"
        atomic_write(out, json.dumps(_clean(environment(extra)), default=_json_default, indent=2,
                                     allow_nan=False) + "\n")
        return out

    def append_round(self, row: dict[str, Any]) -> None:
        """Append one round as one line, fsynced; on failure the file keeps its previous lines."""
        text = dumps(row)
        line = (text + "\n").encode()
        f = self.path / METRICS
        try:
            fd = os.open(f, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the kernel applies the umask
        except OSError as e:
            raise ResultsError(f"cannot write {str(f)!r}: {_why(e)}") from e
        try:
            start = os.fstat(fd).st_size
            created = start == 0
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError as e:
                try:  # leave no torn line behind: the file stays valid for readers and resume
                    os.ftruncate(fd, start)
                except OSError:
                    pass
                raise ResultsError(f"cannot append round {row.get('round')} to {str(f)!r}: {_why(e)}") from e
        finally:
            os.close(fd)
        if created:
            _fsync_dir(self.path)
        self.rows.append(json.loads(text))
        self._ends.append(start + len(line))

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write(self.path / "summary.json", json.dumps(_clean(summary), default=_json_default,
                                                            indent=2, allow_nan=False))

    def write_model(self, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        write_safetensors(self.path / "model.safetensors", state, metadata)

    def write_plots(self) -> list[Path]:
        return plot_history(self.rows, self.path)


def read_run(path: str | Path) -> dict[str, Any]:
    """Load a run directory: ``{"rows": [...], "summary": {...}, "scenario": Scenario}``."""
    from fedsec.scenario import load_scenario

    path = Path(path)
    rows = read_metrics(path / METRICS)
    summary_file = path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return {"rows": rows, "summary": summary, "scenario": load_scenario(path / "scenario.toml")}


def plot_history(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """The run's figures: ``curves.png`` (:func:`fedsec.report.write_curves`; round 0 and the
    title come from ``out_dir``'s summary.json and scenario.toml when they are there)."""
    from fedsec.report import write_curves

    return [write_curves(rows, out_dir)]

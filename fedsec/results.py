"""The run directory (DESIGN.md contract), written atomically.

Every file is written to a temporary sibling and renamed into place, and
``metrics.jsonl`` is rewritten whole each round the same way, so an
interrupted run leaves only complete, parseable files.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


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


def atomic_write(path: Path, data: bytes | str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_safetensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A state dict as safetensors (CPU, contiguous), written atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, save(tensors, metadata=metadata))


class RunWriter:
    """Writes ``runs/<name>-<timestamp>/``: scenario.toml, metrics.jsonl, summary.json, model."""

    def __init__(self, root: str | Path, name: str) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(root) / f"{name}-{stamp}"
        path, i = base, 1
        while path.exists():
            path, i = Path(f"{base}-{i}"), i + 1
        path.mkdir(parents=True)
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def write_scenario(self, toml_text: str) -> None:
        atomic_write(self.path / "scenario.toml", toml_text)

    def append_round(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        atomic_write(self.path / "metrics.jsonl", "".join(dumps(r) + "\n" for r in self.rows))

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
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line]
    summary_file = path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    return {"rows": rows, "summary": summary, "scenario": load_scenario(path / "scenario.toml")}


def plot_history(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r["round"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(rounds, [r["clean_acc"] for r in rows], marker="o", label="clean accuracy")
    for trig in sorted({k for r in rows for k in r.get("asr", {})}):
        ax.plot(rounds, [r["asr"].get(trig) for r in rows], marker="x", ls="--", label=f"ASR {trig}")
    ax.set_xlabel("round")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = out_dir / "accuracy.png"
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out)
    return [out]

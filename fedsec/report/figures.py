"""Figures of runs: ``curves.png`` (one run) and ``fedsec compare`` (several runs overlaid).

Drawn on a bare ``matplotlib.figure.Figure`` (no pyplot), so drawing changes no global state."""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsec.results import METRICS, ResultsError, atomic_write, read_metrics

from fedsec.report.frame import (CURVES, _read_json, _require_run, attack_text, attackers,
                                 read_scenario_dict, scenario_line, scenario_parts)

log = logging.getLogger("fedsec.report")

def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _series(points: list[dict[str, Any]], key: str, sub: str | None = None) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for p in points:
        v = p.get(key)
        if sub is not None:
            v = v.get(sub) if isinstance(v, dict) else None
        y = _num(v)
        if not math.isnan(y):
            xs.append(int(p["round"]))
            ys.append(y)
    return xs, ys


def attack_windows(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(first, last) round of each run of consecutive rounds in which a sampled client attacked."""
    spans: list[tuple[int, int]] = []
    for r in sorted(int(row["round"]) for row in rows if row.get("malicious")):
        if spans and r == spans[-1][1] + 1:
            spans[-1] = (spans[-1][0], r)
        else:
            spans.append((r, r))
    return spans


def _rounds_text(windows: list[tuple[int, int]]) -> str:
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in windows)
    return f"round{'s' if len(windows) > 1 or windows[0][0] != windows[0][1] else ''} {text}"


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{100 * v:.1f}%"


def _points(rows: list[dict[str, Any]], summary: dict[str, Any]) -> list[dict[str, Any]]:
    initial = summary.get("initial")
    return ([{"round": 0, **initial}] if isinstance(initial, dict) else []) + list(rows)


def _style_round_axis(ax: Any, last: int) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(-0.4, max(last, 1) + 0.4)
    ax.grid(alpha=0.3)


def curves_figure(rows: list[dict[str, Any]], summary: dict[str, Any] | None = None,
                  scenario: dict[str, Any] | None = None, title: str | None = None):
    """The curves of one run as a matplotlib Figure (see :func:`write_curves`)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    summary, scenario = summary or {}, scenario or {}
    points = _points(rows, summary)
    last = max((int(p["round"]) for p in points), default=1)
    has_loss = any(not math.isnan(_num(p.get(k))) for p in points for k in ("test_loss", "train_loss"))
    fig = Figure(figsize=(8.2, 6.0 if has_loss else 4.2), layout="constrained")
    axes = fig.subplots(2 if has_loss else 1, 1, sharex=True, squeeze=False,
                        gridspec_kw={"height_ratios": [3, 2]} if has_loss else None)[:, 0]
    top = axes[0]
    marker = "o" if last <= 40 else None
    windows = attack_windows(rows)
    for ax in axes:
        for i, (a, b) in enumerate(windows):
            ax.axvspan(a - 0.5, b + 0.5, color="tab:red", alpha=0.09, linewidth=0,
                       label=f"attack active ({_rounds_text(windows)})" if i == 0 and ax is top else None)
    xs, ys = _series(points, "clean_acc")
    if ys:
        top.plot(xs, ys, marker=marker, ms=4, lw=2, color="tab:blue",
                 label=f"clean accuracy (final {_pct(ys[-1])}, best {_pct(max(ys))})")
    triggers = sorted({k for p in points for k in (p.get("asr") or {})})
    colors = ["tab:red", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    for i, trig in enumerate(triggers):
        xs, ys = _series(points, "asr", trig)
        if ys:
            top.plot(xs, ys, marker="x" if marker else None, ms=5, lw=1.6, ls="--",
                     color=colors[i % len(colors)],
                     label=f"ASR {trig} (final {_pct(ys[-1])}, max {_pct(max(ys))})")
    top.set_ylim(-0.02, 1.02)
    top.yaxis.set_major_formatter(PercentFormatter(1.0))
    top.set_ylabel("clean accuracy / attack success rate" if triggers else "clean accuracy")
    _style_round_axis(top, last)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    if has_loss:
        ax = axes[1]
        for key, style, label in (("test_loss", "-", "test loss"), ("train_loss", ":", "train loss (clients, example-weighted)")):
            xs, ys = _series(points, key)
            if ys:
                ax.plot(xs, ys, ls=style, marker="." if marker else None, lw=1.6,
                        color="black" if key == "test_loss" else "tab:green", label=label)
        ax.set_ylabel("cross-entropy (nats)")
        ax.set_ylim(bottom=0)
        _style_round_axis(ax, last)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[-1].set_xlabel("round (0 = initial model)")
    if title is None:
        name = scenario.get("name", "run")
        title = f"{name}\n{scenario_line(scenario)}" if scenario else name
    fig.suptitle(title, fontsize=10)
    return fig


def _png(fig: Any, dpi: int = 120) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def write_curves(rows: list[dict[str, Any]], out_dir: str | Path, summary: dict[str, Any] | None = None,
                 scenario: dict[str, Any] | None = None) -> Path:
    """``curves.png`` in ``out_dir``: clean accuracy and ASR per trigger against rounds from
    round 0 (the attack window shaded), over a panel of test and training loss.

    ``summary`` / ``scenario`` default to the directory's summary.json / scenario.toml
    (round 0 comes from the summary's ``initial``; the title from the scenario).
    """
    out_dir = Path(out_dir)
    if summary is None:
        summary = _read_json(out_dir / "summary.json")
    if scenario is None:
        scenario = read_scenario_dict(out_dir)
    out = out_dir / CURVES
    atomic_write(out, _png(curves_figure(rows, summary, scenario)))
    return out


# -- report.md -----------------------------------------------------------------------------

def flat_scenario(raw: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A scenario dict's scalar fields as dotted keys and text (``server.aggregator``: ``krum``);
    the ``attack`` and ``plugins`` lists are left out."""
    out: dict[str, str] = {}
    for k, v in raw.items():
        if k in ("attack", "plugins") and not prefix:
            continue
        if isinstance(v, dict):
            out.update(flat_scenario(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else str(v)
    return out


_IGNORED = {"name", "run.output", "run.engine", "run.num_cpus", "run.num_gpus", "run.ray_address",
            "run.threads", "run.imports", "data.root", "data.download"}


def run_labels(raws: list[dict[str, Any]], dirs: list[Path]) -> list[str]:
    """Short labels telling runs apart: their names when these differ, else the scenario
    fields that differ (``server.aggregator=krum, attack=alie``), else the directory names."""
    names = [r.get("name", d.name) for r, d in zip(raws, dirs)]
    if len(set(names)) == len(names):
        return names
    flat = []
    for r in raws:
        f = {k: v for k, v in flat_scenario(r).items() if k not in _IGNORED}
        f["attack"] = attack_text(r) + (f" x{attackers(r)}" if attackers(r) else "")
        plugins = [p.get("name", "?") for p in r.get("plugins", [])]
        f["plugins"] = "+".join(plugins) or "none"
        flat.append(f)
    keys = sorted({k for f in flat for k in f if len({g.get(k) for g in flat}) > 1})
    labels = [", ".join(f"{k.split('.')[-1]}={f.get(k, '-')}" for k in keys) for f in flat]
    if keys and len(set(labels)) == len(labels):
        return labels
    return [d.name for d in dirs]


def compare_figure(runs: list[tuple[str, list[dict[str, Any]], dict[str, Any]]], title: str = "",
                   windows: list[tuple[int, int]] | None = None):
    """Clean accuracy, ASR (highest over each run's triggers) and test loss of several runs
    (``(label, rows, summary)``), one colour per run, on shared round axes; ``windows``:
    attack rounds to shade (when every run attacked in the same rounds)."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    panels = [("clean_acc", "clean accuracy"), ("asr", "attack success rate\n(highest trigger)"),
              ("test_loss", "test loss (nats)")]
    all_points = [_points(rows, summary) for _, rows, summary in runs]
    has_asr = any(p.get("asr") for pts in all_points for p in pts)
    if not has_asr:
        panels = [p for p in panels if p[0] != "asr"]
    fig = Figure(figsize=(8.2, 2.3 * len(panels) + 0.8), layout="constrained")
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    cmap = matplotlib.colormaps["tab10" if len(runs) <= 10 else "tab20"]
    last = 1
    for i, ((label, _, _), pts) in enumerate(zip(runs, all_points)):
        color = cmap(i % cmap.N)
        for ax, (key, _) in zip(axes, panels):
            if key == "asr":
                xs, ys = [], []
                for p in pts:
                    vals = [_num(v) for v in (p.get("asr") or {}).values()]
                    vals = [v for v in vals if not math.isnan(v)]
                    if vals:
                        xs.append(int(p["round"]))
                        ys.append(max(vals))
            else:
                xs, ys = _series(pts, key)
            if xs:
                last = max(last, xs[-1])
                ax.plot(xs, ys, color=color, lw=1.6, marker="o" if len(xs) <= 40 else None, ms=3,
                        label=label if ax is axes[0] else None)
    for ax, (key, ylabel) in zip(axes, panels):
        for i, (a, b) in enumerate(windows or []):
            ax.axvspan(a - 0.5, b + 0.5, color="tab:red", alpha=0.09, linewidth=0,
                       label="attack active" if i == 0 and ax is axes[0] else None)
        ax.set_ylabel(ylabel)
        if key != "test_loss":
            ax.set_ylim(-0.02, 1.02)
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        else:
            ax.set_ylim(bottom=0)
        _style_round_axis(ax, last)
    axes[-1].set_xlabel("round (0 = initial model)")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title="run")
    fig.suptitle(title or f"{len(runs)} runs compared", fontsize=10)
    return fig


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None) -> Path:
    """Overlay the curves of several runs in one PNG at ``out`` (see :func:`compare_figure`)."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ResultsError("compare: give at least one run directory")
    for d in dirs:
        _require_run(d)
    raws = [read_scenario_dict(d) for d in dirs]
    if labels is not None and len(labels) != len(dirs):
        raise ResultsError(f"compare: got {len(labels)} labels for {len(dirs)} runs; give one per run")
    names = list(labels) if labels is not None else run_labels(raws, dirs)
    runs = [(n, read_metrics(d / METRICS), _read_json(d / "summary.json")) for n, d in zip(names, dirs)]
    # the parts of the scenario line every run shares make the title; the rest is in the labels
    parts = [scenario_parts(r) for r in raws]
    common = [f"{k} {v}" if k in ("rule", "attack") and v != "no attack" else v for k, v in parts[0].items()
              if all(p[k] == v for p in parts[1:])]
    title = f"{len(dirs)} runs" + (f": {' · '.join(common)}" if common else "")
    windows = [attack_windows(rows) for _, rows, _ in runs]
    out = Path(out)
    atomic_write(out, _png(compare_figure(runs, title, windows[0] if all(w == windows[0] for w in windows)
                                          else None)))
    log.debug("wrote %s", out)
    return out


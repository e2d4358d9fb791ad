"""The sweep's figures: heatmaps (attack x aggregator) and accuracy / ASR curves per attack.

Every figure says what it averages: heatmap cells are the mean over seeds (a cell with
fewer finished seeds says ``k/n``), with a bottom row holding each rule's worst attack;
curves are the mean over seeds with a band of +- one sample standard deviation.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from fedsec.bench.records import (group_records, higher_is_better, seed_means, varying_axes, with_choice,
                                  worst_per_rule)
from fedsec.results import atomic_write

HEATMAPS = {
    "final_clean_acc": "final clean accuracy",
    "final_asr": "final ASR",
    # what a rule let through is final ASR; max ASR (often ~1 in the first rounds of an untrained
    # model whatever the rule, see experiments/bench/README.md) is kept too
    "max_asr": "max ASR over rounds",
}


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in text)


def _slug(g: dict[str, Any], varying: list[str]) -> str:
    s = "_".join(f"{k.split('.')[-1]}{g[k]}" for k in varying)
    return "__" + _safe(s) if s else ""


def _where(g: dict[str, Any], varying: list[str]) -> str:
    return ", ".join(f"{k}={g[k]}" for k in varying)


def _wrap(label: str, width: int = 10) -> str:
    """Break a long label after its underscores so it fits a heatmap cell ("model_\nreplacement")."""
    lines: list[str] = []
    for part in [p + "_" for p in label.split("_")[:-1]] + [label.split("_")[-1]]:
        if lines and len(lines[-1]) + len(part) <= width:
            lines[-1] += part
        else:
            lines.append(part)
    return "\n".join(x for x in lines if x)


def _seeds_text(counts: set[int]) -> str:
    lo, hi = min(counts), max(counts)
    n = str(lo) if lo == hi else f"{lo}-{hi}"
    return f"mean of {n} seed{'s' if hi > 1 else ''}"


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def band(curves: list[tuple[list[int], list[Any]]]) -> tuple[list[int], list[float], list[float], list[int]]:
    """Mean and sample std over seeds, per round: ``curves`` = [(rounds, values)] per seed.

    Returns (rounds, mean, std, n): rounds where at least one seed has a value, in order;
    std is 0 where only one seed does (no spread to show).
    """
    by: dict[int, list[float]] = {}
    for rounds, values in curves:
        for t, v in zip(rounds, values):
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                by.setdefault(int(t), []).append(float(v))
    ts = sorted(by)
    means = [sum(by[t]) / len(by[t]) for t in ts]
    stds = [math.sqrt(sum((v - m) ** 2 for v in by[t]) / (len(by[t]) - 1)) if len(by[t]) > 1 else 0.0
            for t, m in zip(ts, means)]
    return ts, means, stds, [len(by[t]) for t in ts]


def _heatmap(plt: Any, rows: list[dict], metric: str, title: str, aggs: list[str], attacks: list[str],
             where: str) -> Any | None:
    means = seed_means(rows, metric)
    labels = [a for a in attacks if any((a, g) in means for g in aggs)]
    if not labels:
        return None
    data = [[means[a, g][0] if (a, g) in means else math.nan for g in aggs] for a in labels]
    notes = [[f"{means[a, g][1]}/{means[a, g][2]}" if (a, g) in means and means[a, g][1] < means[a, g][2]
              else "" for g in aggs] for a in labels]
    per_rule = with_choice(worst_per_rule(rows, metric, attacks, aggs))
    if per_rule:
        labels = [*labels, "worst attack"]
        data.append([per_rule[g].value if g in per_rule else math.nan for g in aggs])
        notes.append([_wrap(per_rule[g].at) if g in per_rule else "" for g in aggs])
    counts = {k for a in labels for g in aggs if (a, g) in means for k in [means[a, g][1]]}

    fig, ax = plt.subplots(figsize=(2.6 + 0.8 * len(aggs), 1.9 + 0.5 * len(labels)))
    # the colour map runs from bad (dark) to good (bright) whatever the metric's direction
    cmap = "viridis" if higher_is_better(metric) else "magma_r"
    im = ax.imshow(data, vmin=0, vmax=1, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(aggs)), aggs, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    if per_rule:
        ax.axhline(len(labels) - 1.5, color="white", linewidth=3)
        ax.get_yticklabels()[-1].set_fontweight("bold")
    for yi, row in enumerate(data):
        for xj, v in enumerate(row):
            if math.isnan(v):
                continue
            bright = (v if higher_is_better(metric) else 1 - v) >= 0.6
            text = f"{v:.2f}" + (f"\n{notes[yi][xj]}" if notes[yi][xj] else "")
            ax.text(xj, yi, text, ha="center", va="center", fontsize=6.5 if notes[yi][xj] else 7,
                    color="black" if bright else "white")
    ax.set_xlabel("aggregation rule", fontsize=8)
    ax.set_ylabel("attack", fontsize=8)
    ax.set_title(f"{title}, {_seeds_text(counts or {0})}" + (f"\n{where}" if where else ""), fontsize=9)
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label(title, fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    return fig


def _curves(plt: Any, rows: list[dict], att: str, aggs: list[str], where: str) -> Any | None:
    from matplotlib.ticker import MaxNLocator

    rs = [r for r in rows if r["attack"] == att and r.get("curve_acc")]
    if not rs:
        return None
    has_asr = any(r.get("curve_asr") for r in rs)
    fig, axs = plt.subplots(1, 2 if has_asr else 1, figsize=(10 if has_asr else 6, 3.6), squeeze=False)
    colors = plt.get_cmap("tab10" if len(aggs) <= 10 else "tab20")
    counts: set[int] = set()
    last_round = 0
    for i, a in enumerate(aggs):
        mine = [r for r in rs if r["aggregator"] == a]
        if not mine:
            continue
        counts.add(len(mine))
        for ax, key in zip(axs[0], ("curve_acc", "curve_asr")):
            ts, mean, std, _ = band([(r.get("curve_round") or list(range(1, len(r.get(key) or []) + 1)),
                                      r.get(key) or []) for r in mine])
            if not ts:
                continue
            last_round = max(last_round, ts[-1])
            c = colors(i % colors.N)
            ax.plot(ts, mean, marker=".", color=c, label=a, linewidth=1.3)
            if len(mine) > 1:
                ax.fill_between(ts, [max(0.0, m - s) for m, s in zip(mean, std)],
                                [min(1.0, m + s) for m, s in zip(mean, std)], color=c, alpha=0.15 if len(aggs) <= 6 else 0.07, linewidth=0)
    for ax, lab in zip(axs[0], ("clean accuracy", "attack success rate (highest trigger)")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(-0.2, max(1, last_round) + 0.2)
        ax.set_xlabel("round (0 = initial model)")
        ax.set_ylabel(lab)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    spread = ", band: ± 1 std" if max(counts, default=1) > 1 else ""
    fig.suptitle(f"attack {att}: {_seeds_text(counts or {1})}{spread}" + (f" ({where})" if where else ""),
                 fontsize=10)
    handles, labels = axs[0][0].get_legend_handles_labels()
    # outside the axes: with 14 rules a legend inside hides the curves
    fig.legend(handles, labels, title="aggregation rule", fontsize=7, title_fontsize=8,
               loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def write_plots(manifest: dict[str, Any], records: list[dict[str, Any]], out: Path) -> list[Path]:
    """plots/heatmap_<metric>[__<group>].png and plots/curves_<attack>[__<group>].png, one set per
    combination of the other axes that vary (fraction, alpha, ``vary`` keys)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = Path(out) / "plots"
    for old in plots.glob("*.png"):
        old.unlink()
    written: list[Path] = []
    aggs, attacks = manifest["aggregators"], manifest["attacks"]
    varying = varying_axes(manifest, records)
    for g, rows in group_records(manifest, records):
        suffix, where = _slug(g, varying), _where(g, varying)
        for metric, title in HEATMAPS.items():
            fig = _heatmap(plt, rows, metric, title, aggs, attacks, where)
            if fig is not None:
                path = plots / f"heatmap_{metric}{suffix}.png"
                _save(fig, path)
                written.append(path)
        for att in attacks:
            fig = _curves(plt, rows, att, aggs, where)
            if fig is not None:
                path = plots / f"curves_{_safe(att)}{suffix}.png"
                _save(fig, path)
                written.append(path)
    return written

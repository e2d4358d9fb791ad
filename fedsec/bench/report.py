"""The sweep's tables: results.csv (one row per cell) and results.md (attack x aggregator).

:func:`write_report` rebuilds results.csv, results.md and plots/ from the cells'
metrics.jsonl and summary.json alone (``fedsec report DIR``).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from fedsec.bench.plots import write_plots
from fedsec.bench.records import (Worst, best_rule, collect, group_records, mean_std, varying_axes, with_choice,
                                  worst_per_attack, worst_per_rule)
from fedsec.results import atomic_write

METRICS = {
    "final_clean_acc": "final clean accuracy",
    "final_asr": "final ASR (highest over the cell's triggers)",
    "max_asr": "max ASR over rounds (highest over the cell's triggers)",
    "det_precision": "detection precision (mean over rounds)",
    "det_recall": "detection recall (mean over rounds)",
    "det_fpr": "detection false-positive rate (mean over rounds)",
}

CHOOSE_BY = ("final_clean_acc", "final_asr")
"""The metrics under whose table results.md names the rule with the best worst case."""

WORST = "worst-case"
"""The ``status`` of results.csv's summary rows, and their ``attack`` (worst attack per rule) or
``aggregator`` (worst rule per attack)."""


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return format(v, ".6g")
    return str(v)


def _metric_columns(records: list[dict[str, Any]]) -> list[str]:
    triggers = sorted({k.split(".", 1)[1] for r in records for k in r if k.startswith("max_asr.")})
    return ["final_clean_acc", "final_asr", "max_asr", *[f"final_asr.{t}" for t in triggers],
            *[f"max_asr.{t}" for t in triggers], "det_precision", "det_recall", "det_fpr"]


def _worst_rows(manifest: dict[str, Any], records: list[dict[str, Any]], metrics: list[str]) -> list[dict]:
    """results.csv's summary rows, per group of the other axes: one per rule (``attack`` =
    worst-case: the worst attack's mean over seeds) and one per attack (``aggregator`` =
    worst-case: the worst rule's); ``worst_of`` names where each metric's worst case is."""
    aggs, attacks = manifest["aggregators"], manifest["attacks"]
    out = []
    for g, rows in group_records(manifest, records):
        per = {m: (with_choice(worst_per_rule(rows, m, attacks, aggs)),
                   with_choice(worst_per_attack(rows, m, attacks, aggs))) for m in metrics}
        for side, labels in ((0, aggs), (1, attacks)):
            for label in labels:
                found = {m: per[m][side][label] for m in metrics if label in per[m][side]}
                if not found:
                    continue
                row = {**g, "status": WORST, "aggregator": label if side == 0 else WORST,
                       "attack": WORST if side == 0 else label, **{m: w.value for m, w in found.items()},
                       "worst_of": " ".join(f"{m}={w.at}" for m, w in found.items())}
                out.append(row)
    return out


def results_csv(manifest: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """One row per cell, then the worst-case summary rows (``status`` = worst-case)."""
    axis_cols = ["aggregator", "attack", "malicious_fraction", "num_malicious", "alpha",
                 *manifest.get("vary", []), "seed"]
    metrics = _metric_columns(records)
    cols = ["cell", *axis_cols, "status", "rounds", *metrics, "seconds", "error", "worst_of"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in [*records, *_worst_rows(manifest, records, metrics)]:
        w.writerow([_fmt(r.get("digest")) if c == "cell" else _fmt(r.get(c)) for c in cols])
    return buf.getvalue()


def _worst_text(w: Worst | None, noun: str) -> str:
    if w is None:
        return ""
    more = f"; {w.counted} of {w.total} {noun}" if w.counted < w.total else ""
    return f"{w.value:.3f} ({w.at}{more})"


def _table(manifest: dict, rows: list[dict], metric: str) -> tuple[str, str | None] | None:
    """The attack x aggregator table of one metric (mean ± std over seeds), with a worst-attack
    row and a worst-rule column, and the sentence naming the rule with the best worst case."""
    aggs, attacks = manifest["aggregators"], manifest["attacks"]
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["attack"], r["aggregator"]), []).append(r)
    per_rule = with_choice(worst_per_rule(rows, metric, attacks, aggs))
    per_attack = with_choice(worst_per_attack(rows, metric, attacks, aggs))
    by_attack = bool(per_attack)
    extra = ["worst rule"] if by_attack else []
    lines = ["| attack \\ aggregator | " + " | ".join([*aggs, *extra]) + " |",
             "|---|" + "---:|" * (len(aggs) + len(extra))]
    any_value = False
    for att in attacks:
        if not any((att, a) in by for a in aggs):
            continue
        cells = []
        for a in aggs:
            rs = by.get((att, a), [])
            vals = [r[metric] for r in rs if r.get(metric) is not None]
            if not vals:
                cells.append("—" if rs else "")
                continue
            any_value = True
            mean, std = mean_std(vals)
            txt = f"{mean:.3f}" + (f" ± {std:.3f}" if std is not None else "")
            if len(vals) < len(rs):
                txt += f" ({len(vals)}/{len(rs)})"
            cells.append(txt)
        if by_attack:
            cells.append(_worst_text(per_attack.get(att), "rules"))
        lines.append(f"| {att} | " + " | ".join(cells) + " |")
    if not any_value:
        return None
    # ByzFL chooses by accuracy; the final ASR is the targeted analogue. Detection figures rank
    # badly (a rule that never rejects has a perfect FPR), and max ASR is high for every rule early on.
    best = best_rule(per_rule, metric) if len(per_rule) >= 2 and metric in CHOOSE_BY else None
    tied = [g for g in aggs if best is not None and g in per_rule and per_rule[g].value == per_rule[best].value]
    if len(tied) == len(per_rule):
        best, tied = None, []  # every rule has the same worst case: nothing to choose
    if per_rule:
        cells = [_worst_text(per_rule.get(a), "attacks") for a in aggs]
        cells = [f"**{c}**" if a in tied else c for a, c in zip(aggs, cells)]
        lines.append("| **worst attack** | " + " | ".join([*cells, *([""] if by_attack else [])]) + " |")
    note = None
    if best is not None:
        w = per_rule[best]
        against = (f"**{best}**, {w.value:.3f} against its worst attack ({w.at})" if len(tied) == 1 else
                   ", ".join(f"**{g}**" for g in tied) + f" (tied), {w.value:.3f} against their worst attacks")
        note = f"Best worst case: {against} (ByzFL's way of choosing a rule)."
    return "\n".join(lines), note


def results_md(manifest: dict[str, Any], records: list[dict[str, Any]]) -> str:
    status: dict[str, int] = {}
    for r in {r["digest"]: r for r in records}.values():
        status[r["status"]] = status.get(r["status"], 0) + 1
    seeds = sorted({r.get("seed") for r in records}, key=str)
    out = [f"# {manifest['name']}", ""]
    if manifest.get("description"):
        out += [manifest["description"].strip(), ""]
    out += [f"{len(records)} cells ({', '.join(f'{v} {k}' for k, v in sorted(status.items()))}); "
            f"mean ± std over seeds {seeds} (sample std; `(k/n)`: only k of n seeds finished; "
            "— : no value, e.g. no trigger or nothing rejected). "
            "**worst attack**: per rule, the worst over the attacks (baseline excluded) of the mean over "
            "seeds (lowest accuracy, precision, recall; highest ASR, FPR); **worst rule**: the same per "
            "attack over the rules; shown where there are two or more to choose from.", ""]
    varying = varying_axes(manifest, records)
    for g, rows in group_records(manifest, records):
        if varying:
            out += ["## " + ", ".join(f"{k} = {g[k]}" for k in varying), ""]
        for metric, title in METRICS.items():
            t = _table(manifest, rows, metric)
            if t is None:
                continue
            table, note = t
            out += [f"{'###' if varying else '##'} {title}", "", table, ""]
            if note:
                out += [note, ""]
    failed = [r for r in {r["digest"]: r for r in records}.values() if r["status"] == "failed"]
    if failed:
        out += ["## failed cells", ""]
        out += [f"- `{r['digest']}` ({r['aggregator']}, {r['attack']}, seed {r['seed']}): {r.get('error', '')}"
                for r in failed]
        out.append("")
    return "\n".join(out)


def write_report(out: str | Path) -> dict[str, Any]:
    """(Re)write results.csv, results.md and plots/ from the cells' run directories."""
    out = Path(out)
    manifest, records = collect(out)
    atomic_write(out / "results.csv", results_csv(manifest, records))
    atomic_write(out / "results.md", results_md(manifest, records))
    plots = write_plots(manifest, records, out)
    return {"csv": out / "results.csv", "md": out / "results.md", "plots": plots, "records": records}

"""``report.md``: what a researcher pastes into notes (the scenario in one line, the headline
figures, the curves, per-class accuracy, every round)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsec.results import METRICS, atomic_write, read_metrics

from fedsec.report.figures import _num, _pct, _points, _rounds_text, attack_windows, write_curves
from fedsec.report.frame import CURVES, REPORT, _read_json, _require_run, read_scenario_dict, scenario_line

log = logging.getLogger("fedsec.report")

def _f(v: Any, digits: int = 3) -> str:
    x = _num(v)
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _mean(values: list[Any]) -> float:
    xs = [x for x in map(_num, values) if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _table(header: Sequence[str], body: list[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def _headline(rows: list[dict[str, Any]], summary: dict[str, Any], raw: dict[str, Any]) -> list[tuple[str, str]]:
    initial = summary.get("initial") or {}
    accs = [_num(r.get("clean_acc")) for r in rows]
    out = [("status", str(summary.get("status", "running (no summary.json yet)"))
            + (f": {summary['error']}" if summary.get("error") else "")),
           ("rounds", f"{len(rows)} of {raw.get('server', {}).get('rounds', '?')}")]
    if rows:
        best = max(range(len(rows)), key=lambda i: -math.inf if math.isnan(accs[i]) else accs[i])
        out.append(("clean accuracy: initial → final (best)",
                    f"{_pct(_num(initial.get('clean_acc')))} → {_pct(accs[-1])} "
                    f"(best {_pct(accs[best])} at round {rows[best]['round']})"))
        out.append(("test loss: initial → final", f"{_f(initial.get('test_loss'))} → {_f(rows[-1].get('test_loss'))}"))
        out.append(("train loss (clients): first → last round",
                    f"{_f(rows[0].get('train_loss'))} → {_f(rows[-1].get('train_loss'))}"))
    lifespan = summary.get("asr_lifespan") or {}
    for trig in sorted({k for r in rows for k in (r.get("asr") or {})}):
        series = [_num((r.get("asr") or {}).get(trig)) for r in rows]
        finite = [x for x in series if not math.isnan(x)]
        text = f"{_pct(series[-1])} final, {_pct(max(finite)) if finite else '-'} max"
        life = lifespan.get(trig)
        if isinstance(life, int):
            text += f"; fell below half its peak {life} round(s) after the last attack"
        elif life == "still above":
            text += "; still above half its peak at the end"
        out.append((f"ASR {trig}", text))
    windows = attack_windows(rows)
    if windows:
        out.append(("attack active in", _rounds_text(windows)))
        attacked = [r for r in rows if r.get("malicious")]
        det = {k: _mean([(r.get("detection") or {}).get(k) for r in attacked]) for k in ("precision", "recall", "fpr")}
        precision = "- (nobody rejected)" if math.isnan(det["precision"]) else _f(det["precision"], 2)
        out.append(("detection, mean over attacked rounds",
                    f"precision {precision}, recall {_f(det['recall'], 2)}, FPR {_f(det['fpr'], 2)}"))
    failed = sum(len(r.get("failed") or []) for r in rows)
    nonfinite = sum(len(r.get("nonfinite") or []) for r in rows)
    if failed or nonfinite:
        out.append(("client failures", f"{failed} failed, {nonfinite} non-finite replies"))
    if rows:
        tot = {k: sum(_num(r.get(k)) for r in rows if not math.isnan(_num(r.get(k))))
               for k in ("seconds", "train_seconds", "agg_seconds", "eval_seconds", "bytes_received")}
        out.append(("time", f"{tot['seconds']:.1f} s (training {tot['train_seconds']:.1f}, aggregation "
                            f"{tot['agg_seconds']:.2f}, evaluation {tot['eval_seconds']:.2f})"))
        if tot["bytes_received"]:
            out.append(("received from clients", _mb(tot["bytes_received"])))
    return out


def _per_class(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    initial = (summary.get("initial") or {}).get("per_class_acc")
    final = rows[-1].get("per_class_acc") if rows else None
    if not isinstance(final, list):
        return ""
    header = ["", *[str(c) for c in range(len(final))]]
    body = []
    if isinstance(initial, list):
        body.append(["initial", *[_f(v, 2) for v in initial]])
    body.append([f"round {rows[-1]['round']}", *[_f(v, 2) for v in final]])
    return _table(header, body)


def _round_table(rows: list[dict[str, Any]], summary: dict[str, Any], max_rows: int = 60) -> str:
    triggers = sorted({k for r in rows for k in (r.get("asr") or {})})
    points = _points(rows, summary)
    if len(points) > max_rows:  # keep round 0, every k-th round and the last
        k = math.ceil(len(points) / max_rows)
        points = [p for i, p in enumerate(points) if i % k == 0 or i == len(points) - 1]
    header = ["round", "clean acc", "test loss", "train loss", *[f"ASR {t}" for t in triggers],
              "accepted", "malicious", "failed", "s"]
    body = []
    for p in points:
        n = (lambda k: str(len(p[k])) if isinstance(p.get(k), list) else "-")  # noqa: E731
        body.append([str(p["round"]), _f(p.get("clean_acc")), _f(p.get("test_loss")), _f(p.get("train_loss")),
                     *[_f((p.get("asr") or {}).get(t)) for t in triggers],
                     n("accepted"), n("malicious"), n("failed"), _f(p.get("seconds"), 2)])
    return _table(header, body)


def _plugin_lines(figures: dict[str, Any], prefix: str = "") -> list[str]:
    lines = []
    for k, v in figures.items():
        if isinstance(v, dict):
            lines += _plugin_lines(v, f"{prefix}{k}.")
        elif isinstance(v, list) and len(v) > 12:
            lines.append(f"- `{prefix}{k}`: list of {len(v)}")
        else:
            lines.append(f"- `{prefix}{k}`: {v:.4g}" if isinstance(v, float) else f"- `{prefix}{k}`: {v}")
    return lines


def _env_line(env: dict[str, Any]) -> str:
    if not env:
        return ""
    pk = env.get("packages") or {}
    git = env.get("git") or {}
    parts = [f"fedsec {env.get('fedsec')}"]
    if git.get("commit"):
        parts.append(f"git {git['commit'][:10]}{' (uncommitted changes)' if git.get('dirty') else ''}")
    parts += [f"{k} {pk[k]}" for k in ("torch", "flwr", "ray") if pk.get(k)]
    where = ", ".join(x for x in (env.get("host"), env.get("device")) if x)
    return f"Produced by {', '.join(parts)}" + (f" on {where}" if where else "") + (
        f", started {env['started']}" if env.get("started") else "") + "."


def run_report_markdown(run_dir: str | Path, figure: str = CURVES) -> str:
    """The text of ``report.md`` for a run directory (``figure``: the curves' path from it)."""
    path = Path(run_dir)
    _require_run(path)
    raw = read_scenario_dict(path)
    rows = read_metrics(path / METRICS)
    summary = _read_json(path / "summary.json")
    env = _read_json(path / "env.json")
    parts = [f"# {raw.get('name', path.name)}", "", scenario_line(raw), "",
             _table(["", "value"], _headline(rows, summary, raw)), "",
             f"![clean accuracy, ASR and loss per round]({figure})", ""]
    per_class = _per_class(rows, summary)
    if per_class:
        parts += ["## Per-class test accuracy", "", per_class, ""]
    parts += ["## Rounds", "", _round_table(rows, summary), ""]
    plugins = summary.get("plugins") or {}
    notes = sorted(p.name for p in path.glob("*.md") if p.name != REPORT)
    if plugins or notes:
        parts += ["## Plugins", ""]
        for name, figs in plugins.items():
            parts += [f"**{name}**", "", *(_plugin_lines(figs) if isinstance(figs, dict) else [f"- {figs}"]), ""]
        parts += [f"- [{n}]({n})" for n in notes] + ([""] if notes else [])
    parts += ["## Scenario", "", "```toml", (path / "scenario.toml").read_text().rstrip(), "```", ""]
    line = _env_line(env)
    if line:
        parts += [line, ""]
    return "\n".join(parts)


def write_run_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """``report.md`` and ``curves.png`` for a run (in ``out_dir``, default the run directory)."""
    path = Path(run_dir)
    _require_run(path)
    out = Path(out_dir) if out_dir is not None else path
    curves = write_curves(read_metrics(path / METRICS), out, _read_json(path / "summary.json"),
                          read_scenario_dict(path))
    md = out / REPORT
    atomic_write(md, run_report_markdown(path, figure=CURVES if out == path else str(curves.name)))
    log.debug("wrote %s and %s", md, curves)
    return {"report": md, "curves": curves}


# -- compare -------------------------------------------------------------------------------

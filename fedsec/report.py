"""A run directory read, drawn and reported: ``load_run``, ``curves.png``, ``report.md``, ``compare``.

- :func:`load_run` turns a run directory into a pandas DataFrame, one row per round
  (round 0 is the initial model), nested fields flattened; :data:`RUN_COLUMNS` is its schema.
- :func:`curves_figure` / :func:`write_curves`: ``curves.png``, clean accuracy and the ASR of
  every trigger against rounds (attack window shaded) over a panel of test and training loss.
- :func:`write_run_report`: ``report.md``, what a researcher pastes into notes (the
  scenario in one line, the headline figures, the curves, per-class accuracy, every round).
- :func:`compare_runs`: several runs' curves overlaid in one PNG (``fedsec compare``).

Everything here reads only the run directory's files (scenario.toml, metrics.jsonl,
summary.json, env.json), so it works on a finished, failed or still-running run and on
one copied from another machine. Figures are drawn on a bare ``matplotlib.figure.Figure``
(no pyplot), so drawing changes no global matplotlib state.
"""

from __future__ import annotations

import io
import json
import logging
import math
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsec.results import METRICS, ResultsError, atomic_write, read_metrics

log = logging.getLogger(__name__)

CURVES = "curves.png"
REPORT = "report.md"

RUN_COLUMNS: dict[str, str] = {
    "round": "federated round; 0 is the initial model, evaluated before any training "
             "(summary.json's `initial`), which has only the evaluation columns",
    "clean_acc": "accuracy on the clean test set, a fraction in [0, 1]",
    "test_loss": "mean cross-entropy on the clean test set (nats per example)",
    "train_loss": "the replied clients' last-epoch training loss, mean weighted by their example "
                  "counts (nats per example); NaN when no client replied",
    "asr.<trigger>": "attack success rate of each trigger of the scenario's attacks: the fraction "
                     "of triggered test examples not already of the target class that the model "
                     "assigns to the target, in [0, 1]",
    "detection.precision": "rejected clients that attacked / rejected clients (NaN when the rule "
                           "rejected nobody)",
    "detection.recall": "attackers rejected / attackers that replied (NaN when nobody attacked)",
    "detection.fpr": "honest clients rejected / honest clients that replied",
    "num_sampled": "clients sampled this round (len of `sampled`)",
    "num_accepted": "clients whose update the rule used",
    "num_malicious": "sampled clients that attacked this round",
    "num_failed": "sampled clients whose reply was an error or malformed",
    "num_nonfinite": "replies holding NaN/inf (never aggregated)",
    "seconds": "the whole round, wall-clock seconds",
    "train_seconds": "from sending the model to the last reply (client training), seconds",
    "agg_seconds": "update matrix, adversary stage, pre-aggregators and rule, seconds",
    "eval_seconds": "centralized evaluation (clean accuracy, loss, per-class accuracy, ASR), seconds",
    "bytes_received": "bytes of the arrays in the clients' replies",
    "per_class_acc.<c>": "accuracy on the test examples of class c (NaN if the class is absent); "
                         "weighted by the class counts their mean is clean_acc",
    "sampled": "partition ids sampled this round (list)",
    "accepted": "partition ids whose update the rule used (list)",
    "malicious": "sampled partition ids that attacked this round (list)",
    "nonfinite": "partition ids whose reply held NaN/inf (list)",
    "failed": "[{partition, reason}] of the clients that failed (list)",
    "scores.<partition>": "the rule's suspicion score of each replied client, higher = more "
                          "suspect (rules that score clients only)",
    "plugins.<plugin>.<figure>": "a plugin's per-round figures (e.g. an audit every k rounds)",
}
"""Columns of :func:`load_run` (``<...>``: one column per trigger, class, partition or
plugin figure). ``df.attrs`` holds ``name``, ``run_dir``, ``summary`` (summary.json) and
``scenario`` (scenario.toml as a dict)."""

_FIRST = ["round", "clean_acc", "test_loss", "train_loss"]
_LISTS = ("sampled", "accepted", "malicious", "failed", "nonfinite")


# -- reading -------------------------------------------------------------------------------
def is_run_dir(path: str | Path) -> bool:
    """A run directory (scenario.toml and metrics.jsonl), as opposed to a sweep directory."""
    p = Path(path)
    return (p / "scenario.toml").is_file() and (p / METRICS).is_file()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ResultsError(f"cannot read {str(path)!r}: {e}") from e


def read_scenario_dict(run_dir: str | Path) -> dict[str, Any]:
    """scenario.toml as plain data, unvalidated (a run made with components this process
    cannot import still reads); {} when there is none."""
    path = Path(run_dir) / "scenario.toml"
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ResultsError(f"cannot read {str(path)!r}: {e}") from e


def _require_run(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise ResultsError(f"{str(run_dir)!r} does not exist or is not a directory")
    if not is_run_dir(run_dir):
        raise ResultsError(f"{str(run_dir)!r} is not a run directory (expected scenario.toml and "
                           f"{METRICS}, as `fedsec run` writes)")


def _flatten(row: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        elif k == "per_class_acc" and not prefix and isinstance(v, list):
            out.update({f"{key}.{c}": a for c, a in enumerate(v)})
        else:
            out[key] = v
    return out


def flat_rows(rows: list[dict[str, Any]], initial: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The rows of :func:`load_run` as dicts (no pandas): round 0 from ``initial`` first."""
    out = []
    if initial:
        first = {"round": 0, **initial}
        first.update({k: [] for k in _LISTS})
        out.append(first)
    out.extend(rows)
    flat = []
    for r in out:
        f = _flatten(r)
        for k in _LISTS:
            if isinstance(r.get(k), list):
                f[f"num_{k}"] = len(r[k])
        flat.append(f)
    return flat


def _column_order(columns: list[str]) -> list[str]:
    def rank(c: str) -> tuple[int, Any]:
        if c in _FIRST:
            return 0, _FIRST.index(c)
        for i, pre in enumerate(("asr.", "detection.", "num_")):
            if c.startswith(pre):
                return 1 + i, c
        if c in ("seconds", "train_seconds", "agg_seconds", "eval_seconds", "bytes_received"):
            return 4, c
        if c.startswith("per_class_acc."):
            return 5, int(c.rsplit(".", 1)[1])
        if c in _LISTS:
            return 6, _LISTS.index(c)
        if c.startswith("scores."):
            tail = c.split(".", 1)[1]
            return 7, int(tail) if tail.isdigit() else tail
        return 8, c

    return sorted(columns, key=lambda c: (rank(c)[0], str(rank(c)[1]).zfill(8)))


def load_run(run_dir: str | Path, *, initial: bool = True):
    """A run directory as a pandas DataFrame, one row per round (schema: :data:`RUN_COLUMNS`).

    ``initial=True`` puts the initial model's evaluation first as round 0 (its training,
    timing and detection columns are NaN, its lists empty). Nested fields are flattened
    to dotted columns (``asr.badnets``, ``detection.recall``, ``per_class_acc.3``,
    ``plugins.neural_cleanse.l1_norms``); JSON nulls are NaN. ``df.attrs`` holds
    ``name``, ``run_dir``, ``summary`` (summary.json, {} while the run is going) and
    ``scenario`` (scenario.toml as a dict).

    Raises :class:`~fedsec.results.ResultsError` when ``run_dir`` is not a run directory,
    ImportError (saying what to install) when pandas is missing.
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("fedsec.load_run returns a pandas DataFrame and pandas is not installed: "
                          "pip install pandas") from None
    path = Path(run_dir)
    _require_run(path)
    summary = _read_json(path / "summary.json")
    flat = flat_rows(read_metrics(path / METRICS), summary.get("initial") if initial else None)
    df = pd.DataFrame.from_records(flat)
    if len(df.columns):
        df = df[_column_order(list(df.columns))]
    for c in df.columns:
        if c in _LISTS:
            continue
        values = [v for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            df[c] = pd.to_numeric(df[c].astype("float64") if any(isinstance(v, float) for v in values)
                                  or len(values) < len(df) else df[c])
        elif not values:  # all null (e.g. precision when nothing was ever rejected)
            df[c] = df[c].astype("float64")
    scenario = read_scenario_dict(path)
    df.attrs.update(name=scenario.get("name", path.name), run_dir=str(path), summary=summary,
                    scenario=scenario)
    return df


# -- describing a scenario -----------------------------------------------------------------
def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def rule_text(raw: dict[str, Any]) -> str:
    """The server's rule as written in a title: ``nnm -> krum(f=2)``."""
    server = raw.get("server", {})
    rule = server.get("aggregator", "mean")
    if server.get("aggregator_params"):
        rule += f"({_params_text(server['aggregator_params'])})"
    pre = [p.get("name", "?") for p in server.get("pre_aggregators", [])]
    return " -> ".join([*pre, rule])


def attack_text(raw: dict[str, Any]) -> str:
    """``badnets`` / ``badnets + alie``, or ``no attack``."""
    names = list(dict.fromkeys(a.get("behaviour", "?") for a in raw.get("attack", [])))
    return " + ".join(names) if names else "no attack"


def attackers(raw: dict[str, Any]) -> int:
    return len({p for a in raw.get("attack", []) for p in a.get("partitions", [])})


def split_text(raw: dict[str, Any]) -> str:
    data = raw.get("data", {})
    part = data.get("partitioner", "dirichlet")
    if part == "dirichlet":
        return f"Dirichlet α={data.get('alpha', 0.5)}"
    if part == "iid":
        return "IID"
    if part == "shards":
        return f"{data.get('shards_per_client', 2)} shards/client"
    return part


def scenario_parts(raw: dict[str, Any]) -> dict[str, str]:
    """What a run was, piece by piece: rule, attack, attacker fraction, data split, data and model."""
    data, model = raw.get("data", {}), raw.get("model", {})
    n = data.get("num_clients", 20)
    m = attackers(raw)
    return {"rule": rule_text(raw), "attack": attack_text(raw),
            "fraction": f"{m}/{n} clients malicious ({100 * m / n:.0f}%)" if m else f"{n} clients, all honest",
            "split": split_text(raw), "data": f"{data.get('dataset', 'digits')}, {model.get('name', 'cnn')}"}


def scenario_line(raw: dict[str, Any]) -> str:
    """One line naming what a run was: ``krum(f=2) vs alie · 4/20 clients malicious (20%) ·
    Dirichlet α=0.5 · digits, cnn``."""
    p = scenario_parts(raw)
    versus = f"{p['rule']} vs {p['attack']}" if raw.get("attack") else f"{p['rule']}, no attack"
    return f"{versus} · {p['fraction']} · {p['split']} · {p['data']}"


# -- curves --------------------------------------------------------------------------------
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

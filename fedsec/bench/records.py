"""The figures of a sweep: one record per cell (axis values, status, metrics), grouped for tables.

Everything here is read from the cells' ``metrics.jsonl`` and ``summary.json`` alone,
so a report can be rebuilt at any time (``fedsec report DIR``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsec.bench.directory import cell_dir, is_done, read_manifest, read_status


def _nanmean(xs: list[Any]) -> float | None:
    v = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(v) / len(v) if v else None


def cell_metrics(run_dir: Path) -> dict[str, Any]:
    """The figures of one finished run, from its metrics.jsonl and summary.json."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    summary = json.loads((run_dir / "summary.json").read_text())
    # The figures are over the federated rounds; the untrained model (round 0) only starts the curves.
    rows = [r for r in lines if r.get("round", 1) >= 1]
    zero = next((r for r in lines if r.get("round", 1) == 0), None) or summary.get("initial")
    last = rows[-1] if rows else {}
    triggers = sorted({t for r in rows for t in r.get("asr", {})})
    m: dict[str, Any] = {"rounds": len(rows), "final_clean_acc": last.get("clean_acc")}
    for t in triggers:
        vals = [r["asr"].get(t) for r in rows if r["asr"].get(t) is not None]
        m[f"max_asr.{t}"] = max(vals) if vals else None
        m[f"final_asr.{t}"] = last.get("asr", {}).get(t)
    finals = [m[f"final_asr.{t}"] for t in triggers if m[f"final_asr.{t}"] is not None]
    maxes = [m[f"max_asr.{t}"] for t in triggers if m[f"max_asr.{t}"] is not None]
    m["final_asr"] = max(finals) if finals else None
    m["max_asr"] = max(maxes) if maxes else None
    for k in ("precision", "recall", "fpr"):
        m[f"det_{k}"] = _nanmean([r.get("detection", {}).get(k) for r in rows])
    m["seconds"] = summary.get("seconds", sum(r.get("seconds", 0.0) for r in rows))
    curve = ([{**zero, "round": 0}] if zero and zero.get("clean_acc") is not None else []) + rows
    m["curve_round"] = [r.get("round", i) for i, r in enumerate(curve, start=1 - len(curve) + len(rows))]
    m["curve_acc"] = [r.get("clean_acc") for r in curve]
    m["curve_asr"] = [max((v for v in (r.get("asr") or {}).values() if v is not None), default=None)
                      for r in curve] if triggers else []
    return m


def collect(out: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest and one record per cell (axis values, status, metrics) of a sweep directory."""
    out = Path(out)
    manifest = read_manifest(out)
    records = []
    cache: dict[str, dict[str, Any]] = {}
    for c in manifest["cells"]:
        d = cell_dir(out, c["digest"])
        if c["digest"] not in cache:
            st = read_status(d)
            rec: dict[str, Any] = {"status": st.get("status", "pending")}
            if is_done(d):
                try:
                    rec.update(cell_metrics(d / "run"))
                except (OSError, ValueError, KeyError) as e:
                    rec = {"status": "failed", "error": f"unreadable results: {e}"}
            elif rec["status"] == "running":
                rec["status"] = "incomplete"  # interrupted, or still running elsewhere
            if rec["status"] == "failed" and "error" not in rec:
                rec["error"] = st.get("error", "")
            cache[c["digest"]] = rec
        records.append({**{k: v for k, v in c.items()}, **cache[c["digest"]]})
    return manifest, records


def group_axes(manifest: dict[str, Any]) -> list[str]:
    return ["malicious_fraction", "alpha", *manifest.get("vary", [])]


def group_records(manifest: dict[str, Any], records: list[dict[str, Any]]) -> list[tuple[dict, list[dict]]]:
    keys = group_axes(manifest)
    by: dict[str, tuple[dict, list[dict]]] = {}
    for r in records:
        g = {k: r.get(k) for k in keys}
        by.setdefault(json.dumps(g, sort_keys=True, default=str), (g, []))[1].append(r)
    return list(by.values())


def varying_axes(manifest: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    return [k for k in group_axes(manifest) if len({json.dumps(r.get(k)) for r in records}) > 1]


def mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


# -- the worst case over attacks (ByzFL's way of ranking rules) ---------------------------------

_LOWER_IS_BETTER = ("final_asr", "max_asr", "det_fpr")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is good for the defender (accuracy, precision,
    recall) or bad (ASR, false-positive rate); per-trigger ``final_asr.<t>`` counts as ASR."""
    return metric.split(".", 1)[0] not in _LOWER_IS_BETTER


def is_attacked(rows: list[dict[str, Any]]) -> bool:
    """Whether these cells had attackers: the no-attack baseline row (``num_malicious`` 0,
    whatever its label) is left out of the worst case, which is over attacks."""
    return any((r.get("num_malicious") or 0) > 0 for r in rows)


def attacked_labels(rows: list[dict[str, Any]], attacks: list[str]) -> list[str]:
    """The attack labels of ``rows`` that had attackers, in sweep order."""
    return [a for a in attacks if is_attacked([r for r in rows if r["attack"] == a])]


def seed_means(rows: list[dict[str, Any]], metric: str) -> dict[tuple[str, str], tuple[float, int, int]]:
    """``(attack, aggregator) -> (mean over the seeds that have a value, k, n)``: k cells with
    a value out of n cells; pairs where no cell has a value are left out."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["attack"], r["aggregator"]), []).append(r)
    out = {}
    for key, rs in by.items():
        vals = [float(r[metric]) for r in rs if r.get(metric) is not None]
        if vals:
            out[key] = (sum(vals) / len(vals), len(vals), len(rs))
    return out


@dataclass(frozen=True, kw_only=True)
class Worst:
    """The worst seed-mean of a metric over one axis (attacks for a rule, rules for an attack)."""

    value: float
    at: str
    """The label (attack or rule) where the worst value occurs; the first one in sweep order on a tie."""
    counted: int
    """How many labels had a value; fewer than ``total`` means the worst case may be optimistic."""
    total: int


def _worst(candidates: list[tuple[str, float | None]], metric: str) -> Worst | None:
    have = [(label, v) for label, v in candidates if v is not None]
    if not have:
        return None
    pick = min if higher_is_better(metric) else max
    value = pick(v for _, v in have)
    at = next(label for label, v in have if v == value)
    return Worst(value=value, at=at, counted=len(have), total=len(candidates))


def _candidates(rows: list[dict[str, Any]], metric: str, pairs: list[tuple[str, str]], label_of: int
                ) -> list[tuple[str, float | None]]:
    """(label, seed-mean or None) for the pairs (attack, aggregator) that have cells. A pair whose
    finished cells have no value by nature (no trigger, nothing rejected) is left out; one whose
    cells have not finished stays in, as a missing value the worst case is marked for."""
    means = seed_means(rows, metric)
    out = []
    for a, g in pairs:
        rs = [r for r in rows if r["attack"] == a and r["aggregator"] == g]
        if (a, g) in means:
            out.append(((a, g)[label_of], means[a, g][0]))
        elif rs and not any(r.get("status") == "done" for r in rs):
            out.append(((a, g)[label_of], None))
    return out


def worst_per_rule(rows: list[dict[str, Any]], metric: str, attacks: list[str],
                   aggregators: list[str]) -> dict[str, Worst]:
    """For each rule, the worst over the attacks (no-attack baseline excluded) of the metric's
    mean over seeds: the minimum for accuracy, the maximum for ASR. As ByzFL
    (``byzfl/benchmark/evaluate_results.py``), seeds are averaged first, then the worst attack
    is taken, so a rule is ranked by what its strongest adversary achieves on average."""
    attacked = attacked_labels(rows, attacks)
    out = {}
    for g in aggregators:
        w = _worst(_candidates(rows, metric, [(a, g) for a in attacked], 0), metric)
        if w is not None:
            out[g] = w
    return out


def worst_per_attack(rows: list[dict[str, Any]], metric: str, attacks: list[str],
                     aggregators: list[str]) -> dict[str, Worst]:
    """For each attack (baseline included), the worst over the rules of the metric's seed-mean:
    how far the attack gets against every rule of the sweep."""
    out = {}
    for a in attacks:
        w = _worst(_candidates(rows, metric, [(a, g) for g in aggregators], 1), metric)
        if w is not None:
            out[a] = w
    return out


def with_choice(per: dict[str, Worst]) -> dict[str, Worst]:
    """``per`` when some entry was chosen among two or more labels, else {}: the worst of a single
    attack (or rule) is that row (column) itself, not worth a row of its own."""
    return per if any(w.total >= 2 for w in per.values()) else {}


def best_rule(per_rule: dict[str, Worst], metric: str) -> str | None:
    """The rule whose worst case is best (ByzFL's choice): max-min for accuracy, min-max for ASR."""
    if not per_rule:
        return None
    pick = max if higher_is_better(metric) else min
    best = pick(w.value for w in per_rule.values())
    return next(g for g, w in per_rule.items() if w.value == best)

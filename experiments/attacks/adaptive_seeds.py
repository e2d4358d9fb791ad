"""Read the adaptive_seeds sweep: does "a tailored attack hurts its rule more" hold over seeds,
and do DnC / NNM + Krum fall only under strong label skew?

    OMP_NUM_THREADS=1 fedsec bench experiments/bench/adaptive_seeds.toml --jobs 1
    python experiments/attacks/adaptive_seeds.py runs/bench/adaptive_seeds \
        --seed0 experiments/bench/results/adaptive_digits/results.csv \
        --out experiments/bench/results/adaptive_seeds/adaptive_seeds.md

Two markdown tables, from final clean accuracies (10 rounds):

1. alpha = 1, per rule and seed: no attack, the worst rule-agnostic attack (ALIE,
   Min-Max), the worst rule-tailored one (Fang's Krum and trimmed-mean attacks,
   AGR-tailored with -mu/||mu|| and -sign(mu)), and over the seeds the mean of each
   and in how many seeds the tailored attack did worse than the agnostic one (the
   published direction: Fang et al. 2020, Shejwalkar & Houmansadr 2021). Seed 0 comes
   from adaptive_digits' results.csv (``--seed0``), restricted to the same attacks.
2. DnC and NNM + Krum under none / Min-Max / Fang (Krum) / AGR-tailored (unit vector),
   mean ± std over seeds, at alpha = 1 and alpha = 10.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import fedsec

AGNOSTIC = ("alie", "minmax")
TAILORED = ("fang_krum", "fang_trmean", "agr_tailored_uv", "agr_tailored_sign")
RULES = ("krum", "trimmed_mean", "median", "fltrust", "dnc", "nnm + krum")


def label(agg: str, pre) -> str:
    return agg if str(pre) in ("[]", "", "nan") else f"nnm + {agg}"


def frame(sweep: str, seed0: str | None):
    import pandas as pd

    df = fedsec.load_sweep(sweep)
    parts = [df]
    if seed0:
        old = pd.read_csv(seed0)
        old = old[(old["server.rounds"] == 10) & (old.status == "done") & (old.seed == 0)]
        parts.append(old)
    df = pd.concat(parts, ignore_index=True)
    df = df[df.status == "done"].copy()
    df["rule"] = [label(a, p) for a, p in zip(df.aggregator, df["server.pre_aggregators"])]
    df["seed"] = df.seed.astype(int)
    df["alpha"] = df.alpha.astype(float)
    return df.drop_duplicates(subset=["rule", "attack", "alpha", "seed"], keep="first")


def worst(accs: dict[str, float], names: tuple[str, ...]) -> tuple[float, str]:
    present = {a: accs[a] for a in names if a in accs}
    if not present:
        return float("nan"), "—"
    name = min(present, key=present.get)
    return present[name], name


def f3(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def direction_table(df) -> str:
    rows = ["| rule | seed | no attack | worst agnostic | worst tailored | tailored - agnostic |",
            "|---|---:|---:|---:|---:|---:|"]
    one = df[df.alpha == 1.0]
    for rule in RULES:
        g = one[one.rule == rule]
        if g.empty:
            continue
        nones, ags, tas, holds, seeds = [], [], [], 0, sorted(g.seed.unique())
        for seed in seeds:
            accs = dict(zip(g[g.seed == seed].attack, g[g.seed == seed].final_clean_acc))
            a, an = worst(accs, AGNOSTIC)
            t, tn = worst(accs, TAILORED)
            nones.append(accs.get("none", float("nan")))
            ags.append(a)
            tas.append(t)
            holds += int(t < a)
            rows.append(f"| {rule} | {seed} | {f3(nones[-1])} | {f3(a)} ({an}) | {f3(t)} ({tn}) | {t - a:+.3f} |")
        m = [sum(v) / len(v) for v in (nones, ags, tas)]
        rows.append(f"| **{rule}** | mean | **{f3(m[0])}** | **{f3(m[1])}** | **{f3(m[2])}** | "
                    f"**{m[2] - m[1]:+.3f}** (tailored worse in {holds}/{len(seeds)}) |")
    return "\n".join(rows)


def heterogeneity_table(df) -> str:
    attacks = ("none", "minmax", "fang_krum", "agr_tailored_uv")
    rows = ["| rule | alpha | seeds | " + " | ".join(attacks) + " |", "|---|---:|---:|" + "---:|" * len(attacks)]
    for rule in ("dnc", "nnm + krum"):
        for alpha in sorted(df.alpha.unique()):
            g = df[(df.rule == rule) & (df.alpha == alpha)]
            if g.empty:
                continue
            cells = []
            for att in attacks:
                v = g[g.attack == att].final_clean_acc
                cells.append("—" if v.empty else f"{v.mean():.3f} ± {v.std(ddof=0):.3f}")
            rows.append(f"| {rule} | {alpha:g} | {g.seed.nunique()} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="the sweep directory (runs/bench/adaptive_seeds)")
    ap.add_argument("--seed0", help="adaptive_digits' results.csv, for seed 0 at alpha = 1")
    ap.add_argument("--out", help="also write the tables to this markdown file")
    args = ap.parse_args()
    df = frame(args.sweep, args.seed0)
    text = ("## Final clean accuracy, alpha = 1: rule-tailored vs rule-agnostic attacks, per seed\n\n"
            + direction_table(df)
            + "\n\n## DnC and NNM + Krum against label skew: final clean accuracy, mean ± std over seeds\n\n"
            + heterogeneity_table(df) + "\n")
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

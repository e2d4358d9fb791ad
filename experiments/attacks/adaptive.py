"""Read the adaptive_digits sweep: tailored vs rule-agnostic attacks, and backdoor lifespans.

    OMP_NUM_THREADS=1 fedsec bench experiments/bench/adaptive_digits.toml --jobs 1
    python experiments/attacks/adaptive.py runs/bench/adaptive_digits \
        --out experiments/bench/results/adaptive_digits/adaptive.md

Prints (and with --out writes) two markdown tables built from the cells'
summary.json files (through ``fedsec.load_sweep``):

1. per rule (with and without NNM), the final clean accuracy under no attack, under
   the strongest rule-agnostic attack (ALIE, Min-Max) and under the strongest
   rule-tailored one (Fang's two attacks, AGR-tailored in its three directions),
   and which attack that is: the published claim (Fang et al. 2020, Shejwalkar &
   Houmansadr 2021) is that a tailored attack hurts a rule more than an agnostic one
   with the same attackers;
2. the backdoor rows: peak and final ASR and ``asr_lifespan`` (rounds after the last
   attacking round until ASR falls below half its peak), BadNets vs Neurotoxin
   (Zhang et al. 2022 claim Neurotoxin's backdoor lasts longer).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import fedsec

AGNOSTIC = ("alie", "minmax")
TAILORED = ("fang_krum", "fang_trmean", "agr_tailored", "agr_tailored_uv", "agr_tailored_sign")


def _fmt(x: float) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _worst(accs: dict[str, float], names: tuple[str, ...]) -> tuple[float, str]:
    present = {a: accs[a] for a in names if a in accs}
    if not present:
        return float("nan"), "—"
    name = min(present, key=present.get)
    return present[name], name


def tailored_table(df) -> str:
    rows = ["| rule | no attack | worst agnostic | worst tailored | tailored - agnostic |",
            "|---|---:|---:|---:|---:|"]
    byz = df[df["server.rounds"] == df["server.rounds"].min()]
    for (pre, agg), g in byz.groupby([byz["server.pre_aggregators"].astype(str), "aggregator"], sort=False):
        accs = dict(zip(g.attack, g.final_clean_acc))
        label = agg if pre == "[]" else f"nnm + {agg}"
        a, an = _worst(accs, AGNOSTIC)
        t, tn = _worst(accs, TAILORED)
        rows.append(f"| {label} | {_fmt(accs.get('none'))} | {_fmt(a)} ({an}) | {_fmt(t)} ({tn}) "
                    f"| {t - a:+.3f} |")
    return "\n".join(rows)


def lifespan_table(df) -> str:
    rows = ["| rule | attack | max ASR | final ASR | asr_lifespan (rounds) |", "|---|---|---:|---:|---:|"]
    back = df[(df["server.rounds"] == df["server.rounds"].max()) & (df.attack != "none")]
    for _, r in back.iterrows():
        life = [v for k, v in r.items() if str(k).startswith("summary.asr_lifespan.") and v == v]
        span = life[0] if life else "—"
        if isinstance(span, float) and span.is_integer():
            span = int(span)
        rows.append(f"| {r.aggregator} | {r.attack} | {_fmt(r.max_asr)} | {_fmt(r.final_asr)} | {span} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", help="the sweep directory (runs/bench/adaptive_digits)")
    ap.add_argument("--out", help="also write the tables to this markdown file")
    args = ap.parse_args()
    df = fedsec.load_sweep(args.sweep)
    df = df[df.status == "done"]
    text = ("## Final clean accuracy: rule-tailored vs rule-agnostic attacks (10 rounds)\n\n"
            + tailored_table(df)
            + "\n\n## Backdoor durability: attack in rounds 16-20, clean rounds 21-45\n\n"
            + lifespan_table(df) + "\n")
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

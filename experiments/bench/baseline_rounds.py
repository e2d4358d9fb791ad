"""How many rounds a sweep needs: each rule's no-attack clean accuracy per round.

A sweep whose baselines have not converged cannot tell "fails under attack" from
"never trained". This runs the no-attack federation of a few rules at one data
setting and prints the clean accuracy every ``--every`` rounds, with the wall time.

    OMP_NUM_THREADS=1 python experiments/bench/baseline_rounds.py --alpha 0.1 --rounds 40 \
        --rules mean median krum

(the settings of byzantine_digits.toml: 15 clients, 2 local epochs, batch 32,
vectorized; rules that take f get f = 3). ``--alpha iid`` uses the IID partitioner.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from fedsec import load_scenario, run

QUICK = Path(__file__).resolve().parents[1] / "quickstart.toml"
TAKES_F = {"krum", "multikrum", "bulyan", "trimmed_mean", "mda"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alpha", default="0.1", help="Dirichlet alpha, or 'iid'")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--every", type=int, default=5)
    ap.add_argument("--clients", type=int, default=15)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rules", nargs="+", default=["mean", "median", "krum"])
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        for rule in args.rules:
            sets = [f"data.num_clients={args.clients}", f"server.rounds={args.rounds}",
                    f"client.epochs={args.epochs}", "client.batch_size=32", 'run.engine="inline"',
                    "run.vectorize=true", f'server.aggregator="{rule}"', f'run.output="{out}"',
                    f"run.seed={args.seed}"]
            sets.append('data.partitioner="iid"' if args.alpha == "iid" else f"data.alpha={float(args.alpha)}")
            if rule in TAKES_F:
                sets.append("server.aggregator_params={f=3}")
            t = time.perf_counter()
            r = run(load_scenario(QUICK, sets))
            acc = [row["clean_acc"] for row in r.history]
            marks = ", ".join(f"r{i + 1}: {a:.3f}" for i, a in enumerate(acc) if (i + 1) % args.every == 0)
            print(f"{rule:>14} alpha={args.alpha}  {time.perf_counter() - t:5.1f} s  {marks}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

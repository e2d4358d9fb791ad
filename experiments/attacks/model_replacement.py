"""Single-shot model replacement (Bagdasaryan et al., AISTATS 2020, arXiv:1807.00459) on digits.

After ``--warmup`` honest FedAvg rounds, ONE attacker (partition 0) attacks in
round R = warmup + 1 only (start_round = end_round = R): it trains a backdoored
model X on trigger-poisoned batches and submits G + gamma (X - G). The table
shows the ASR in round R and its decay over the following honest rounds for
gamma = n/eta (replacement, the paper's default), gamma = 1 (a plain poisoned
update, no scaling) and gamma = n/eta under a norm bound S (constrain-and-scale).

    .venv/bin/python experiments/attacks/model_replacement.py \
        [--clients 10 --warmup 5 --after 6 --epochs 5 --bound 10]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from fedsec import load_scenario, run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--after", type=int, default=6, help="honest rounds after the attack")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--p", type=float, default=0.3)
    ap.add_argument("--bound", type=float, default=10.0, help="norm bound S of the constrained run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="/tmp/runs-backdoor")
    a = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    R = a.warmup + 1
    rounds = R + a.after

    def attack(params: str) -> str:
        return (f'attack=[{{behaviour="model_replacement", partitions=[0], start_round={R}, '
                f'end_round={R}, params={{poison_fraction={a.p}{params}}}}}]')

    runs = {
        "gamma=n/eta": attack(""),
        "gamma=1": attack(", gamma=1.0"),
        f"n/eta,S={a.bound:g}": attack(f", norm_bound={a.bound}"),
    }
    base = [f"server.rounds={rounds}", f"data.num_clients={a.clients}", f"client.epochs={a.epochs}",
            f"run.seed={a.seed}", 'server.aggregator="mean"']
    hist, secs = {}, {}
    for name, extra in runs.items():
        t0 = time.perf_counter()
        r = run(load_scenario("experiments/quickstart.toml", [*base, extra]), output=a.output)
        secs[name] = time.perf_counter() - t0
        hist[name] = r.history
    print(f"digits, {a.clients} clients (Dirichlet 0.5), FedAvg (example-weighted), eta = 1, "
          f"{a.epochs} local epochs, seed {a.seed}; attacker = partition 0, only in round {R}, "
          f"p = {a.p}, 3x3 patch -> class 0\n")
    names = list(runs)
    print("round |        | " + " | ".join(f"{n:>14} acc   asr" for n in names))
    for i in range(rounds):
        rnd = i + 1
        tag = "ATTACK" if rnd == R else ("warmup" if rnd < R else "honest")
        cells = [f"{hist[n][i]['clean_acc']:18.3f} {hist[n][i]['asr']['model_replacement']:5.3f}"
                 for n in names]
        print(f"{rnd:5d} | {tag:6} | " + " | ".join(cells))
    print("\nrun             | ASR round R | ASR R+1 | ASR R+3 | ASR last | acc R | seconds")
    for n in names:
        h = hist[n]
        s = [r["asr"]["model_replacement"] for r in h]

        def at(j: int) -> str:
            return f"{s[j]:.3f}" if j < len(s) else "  -  "

        print(f"{n:15} | {s[R - 1]:11.3f} | {at(R):>7} | {at(R + 2):>7} | {s[-1]:8.3f} | "
              f"{h[R - 1]['clean_acc']:.3f} | {secs[n]:7.1f}")


if __name__ == "__main__":
    main()

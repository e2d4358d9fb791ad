"""Seconds per round of the same federation under each engine, against a plain PyTorch loop.

    python experiments/benchmarks/engine_overhead.py [--clients 20 --rounds 5 --epochs 2]

Runs one scenario (default: digits, 20 clients, 5 rounds, 2 local epochs,
small CNN, FedAvg) under ``ray``, ``inline`` and ``flower``, plus a plain
single-process loop written out below with the identical local training
(same partitions, batch order, SGD) and weighted averaging: the floor with no
framework at all. Prints start-up time, steady-state seconds per round
(rounds 2..R), ratios to the plain loop, and the same with 0 local epochs,
whose per-client time is pure framework overhead per message.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch

from fedsec import load_scenario, run
from fedsec.federation.env import dataset_of, initial_state, new_model, partitions_of
from fedsec.metrics import accuracy
from fedsec.seeding import generator

warnings.simplefilter("ignore")
logging.getLogger("flwr").setLevel(logging.ERROR)


def plain_loop(s) -> tuple[float, list[float]]:
    """FedAvg written out by hand: returns (start-up seconds, seconds per round)."""
    t0 = time.perf_counter()
    data = dataset_of(s)
    parts = partitions_of(s)
    state = initial_state(s)
    model = new_model(s)
    startup = time.perf_counter() - t0
    c = s.client
    per_round = []
    torch.set_num_threads(s.run.threads)
    for rnd in range(1, s.server.rounds + 1):
        t = time.perf_counter()
        acc_state = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in state.items()}
        total = 0.0
        for pid in range(s.data.num_clients):
            local = data.train.subset(parts[pid])
            model.load_state_dict(state)
            opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
            g = generator(s.run.seed, "client", rnd, pid)
            for _ in range(c.epochs):
                order = torch.randperm(len(local), generator=g)
                for i in range(0, len(local), c.batch_size):
                    idx = order[i : i + c.batch_size]
                    loss = torch.nn.functional.cross_entropy(model(local.x[idx]), local.y[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            n = float(len(local))
            total += n
            for k, v in model.state_dict().items():
                acc_state[k] += n * v.float()
        state = {k: (v / total).to(state[k].dtype) for k, v in acc_state.items()}
        model.load_state_dict(state)
        accuracy(model, data.test)
        per_round.append(time.perf_counter() - t)
    return startup, per_round


def engine_run(s) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    r = run(s, output="/tmp/fedsec-bench-runs")
    total = time.perf_counter() - t0
    per_round = [row["seconds"] for row in r.history]
    return total - sum(per_round), per_round


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--engines", default="ray,inline,flower")
    args = ap.parse_args()
    for epochs in (args.epochs, 0):
        base = [f"data.num_clients={args.clients}", f"server.rounds={args.rounds}", f"client.epochs={epochs}"]
        rows = []
        s_plain = load_scenario("experiments/quickstart.toml", base)
        rows.append(("plain loop", *plain_loop(s_plain)))
        for eng in args.engines.split(","):
            s = load_scenario("experiments/quickstart.toml", base + [f'run.engine="{eng}"'])
            rows.append((eng, *engine_run(s)))
        floor = sum(rows[0][2][1:]) / max(len(rows[0][2]) - 1, 1)
        print(f"\n{args.clients} clients x {args.rounds} rounds x {epochs} local epochs (steady state = rounds 2..{args.rounds})")
        print(f"{'engine':<12}{'start-up s':>12}{'s/round':>10}{'x plain':>9}{'ms/client msg':>15}")
        for name, startup, per in rows:
            steady = sum(per[1:]) / max(len(per) - 1, 1)
            overhead_ms = 1000 * (steady - floor) / args.clients
            print(f"{name:<12}{startup:>12.2f}{steady:>10.3f}{steady / floor:>9.2f}{overhead_ms:>15.1f}")


if __name__ == "__main__":
    main()

"""Seconds per round of the same federation under each engine, against a plain PyTorch loop.

    python experiments/benchmarks/engine_overhead.py                      # everything, a few minutes
    python experiments/benchmarks/engine_overhead.py --axes engines --rounds 5
    python experiments/benchmarks/engine_overhead.py --axes clients --clients 20d,100,1000

Two tables, each row one federation of the bundled digits with the small CNN,
FedAvg, 2 local epochs (``--epochs``), batch 32, seed 0:

- ``engines``: the quickstart (20 clients, Dirichlet(0.5)) under ``ray``,
  ``inline``, ``flower`` and the vectorized path (``run.vectorize``) on
  ``inline`` and ``ray``; then the same with 0 local epochs, whose time per
  client is pure framework cost per message.
- ``clients``: the client-count axis (``20d`` = 20 Dirichlet(0.5), ``20`` /
  ``100`` / ``1000`` = IID) for the plain loop, ``inline`` and the vectorized
  path (``--vec-engines inline,ray``).

The floor is a plain single-process loop written out below with the identical
local training (same partitions, batch order, SGD) and weighted averaging, plus
the server's test-set evaluation each round: the same work with no framework.
Every figure is wall seconds per steady-state round (for an engine, from one
round's metrics line to the next: training, aggregation, evaluation, recording,
checkpoints): the median over rounds 2..R (round 1 pays start-up: actors,
kernels, caches); ``x plain`` is the ratio to
the floor (below 1 is faster); ``gc s`` is the time Python's cyclic garbage
collector took per round. The 1-minute load average is printed with each table:
on a shared machine it says how far to trust the figures.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import time
import warnings

import torch

from fedsec import load_scenario, run
from fedsec.federation.env import dataset_of, initial_state, new_model, partitions_of
from fedsec.metrics import accuracy
from fedsec.seeding import generator

warnings.simplefilter("ignore")
logging.getLogger("flwr").setLevel(logging.ERROR)


class GcClock:
    """Seconds spent in Python's cyclic GC while active."""

    def __init__(self) -> None:
        self.total = 0.0
        self._t = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._t

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)


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
    """(start-up seconds, wall seconds per round): a round is the time from one round's
    metrics line to the next, so it includes recording and checkpointing; round 1 is
    timed from its own start (the ``seconds`` it reports) and start-up is the rest."""
    from fedsec.federation.server import Progress

    ends: list[float] = []
    t0 = time.perf_counter()
    r = run(s, output="/tmp/fedsec-bench-runs", progress=Progress(on_round_end=lambda row: ends.append(time.perf_counter())))
    first = r.history[0]["seconds"]
    per_round = [first] + [b - a for a, b in zip(ends, ends[1:])]
    return ends[0] - t0 - first, per_round


def steady(per_round: list[float]) -> float:
    return statistics.median(per_round[1:] or per_round)


def measure(name: str, s, plain: bool = False) -> tuple[str, float, list[float], float]:
    with GcClock() as clock:
        startup, per = plain_loop(s) if plain else engine_run(s)
    return name, startup, per, clock.total / max(len(per), 1)


VARIANTS = {  # name -> scenario overrides
    "ray": ['run.engine="ray"'],
    "inline": ['run.engine="inline"'],
    "flower": ['run.engine="flower"'],
    "inline+vec": ['run.engine="inline"', "run.vectorize=true"],
    "ray+vec": ['run.engine="ray"', "run.vectorize=true"],
}


def table(title: str, rows, clients: int) -> None:
    floor = steady(rows[0][2])
    load = os.getloadavg()[0]
    print(f"\n{title}  (load average {load:.1f} on {os.cpu_count()} CPUs)")
    print(f"{'variant':<14}{'start-up s':>11}{'s/round':>10}{'x plain':>9}{'ms/client':>11}{'gc s':>7}")
    for name, startup, per, gc_s in rows:
        st = steady(per)
        print(f"{name:<14}{startup:>11.2f}{st:>10.3f}{st / floor:>9.2f}"
              f"{1000 * (st - floor) / clients:>11.2f}{gc_s:>7.3f}", flush=True)


def base(clients: int, partitioner: str, rounds: int, epochs: int) -> list[str]:
    return [f"data.num_clients={clients}", f'data.partitioner="{partitioner}"', f"server.rounds={rounds}",
            f"client.epochs={epochs}"]


def engines_axis(args) -> None:
    for epochs in (args.epochs, 0):
        over = base(20, "dirichlet", args.rounds, epochs)
        rows = [measure("plain loop", load_scenario(QUICK, over), plain=True)]
        for name in args.engines.split(","):
            rows.append(measure(name, load_scenario(QUICK, over + VARIANTS[name])))
        table(f"20 clients Dirichlet(0.5) x {args.rounds} rounds x {epochs} local epochs "
              f"(median of rounds 2..{args.rounds})", rows, 20)


def clients_axis(args) -> None:
    for spec in args.clients.split(","):
        dirichlet = spec.endswith("d")
        n = int(spec.rstrip("d"))
        over = base(n, "dirichlet" if dirichlet else "iid", args.rounds, args.epochs)
        rows = [measure("plain loop", load_scenario(QUICK, over), plain=True)]
        for name in ["inline"] + [f"{e}+vec" for e in args.vec_engines.split(",") if e]:
            if name == "inline" and n > args.max_sequential:
                continue
            rows.append(measure(name, load_scenario(QUICK, over + VARIANTS[name])))
        kind = "Dirichlet(0.5)" if dirichlet else "IID"
        table(f"{n} clients {kind} x {args.rounds} rounds x {args.epochs} local epochs "
              f"(median of rounds 2..{args.rounds})", rows, n)


QUICK = "experiments/quickstart.toml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="rounds per run (round 1 is warm-up)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--axes", default="engines,clients", help="engines, clients or both")
    ap.add_argument("--engines", default="ray,inline,inline+vec,ray+vec,flower",
                    help=f"variants of the engines table, from {list(VARIANTS)}")
    ap.add_argument("--clients", default="20d,20,100,1000",
                    help="client counts of the clients table; a trailing d = Dirichlet(0.5), else IID")
    ap.add_argument("--vec-engines", default="inline,ray", help="engines the vectorized path runs on")
    ap.add_argument("--max-sequential", type=int, default=1000,
                    help="skip the per-client inline engine above this many clients")
    args = ap.parse_args()
    if args.rounds < 2:
        ap.error("--rounds must be >= 2 (round 1 is warm-up)")
    axes = set(args.axes.split(","))
    if "engines" in axes:
        engines_axis(args)
    if "clients" in axes:
        clients_axis(args)


if __name__ == "__main__":
    main()

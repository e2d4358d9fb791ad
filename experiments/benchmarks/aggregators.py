"""Seconds per call of every aggregation rule, beside Flower's built-in equivalents.

    python experiments/benchmarks/aggregators.py [--quick] [--repeats 3]

For n in {20, 100} clients and d in {1e5, 1e6} coordinates (``--quick``: d = 1e5
only), times each registered rule on one random float32 (n, d) matrix on CPU,
and Flower's FedAvg / FedMedian / FedTrimmedAvg / Krum / MultiKrum / Bulyan
``aggregate_train`` on the identical numbers (as Messages with one array),
in the same process. Prints the median time of ``--repeats`` calls and the
ratio ours / Flower's (< 1 = faster).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from fedsec.federation.engines import _server_context
from strategies import AGGREGATORS, get_aggregator


def params(name: str, n: int) -> dict:
    f = max(1, n // 5 - 1) if name != "bulyan" else (n - 3) // 4
    return {"krum": {"f": f}, "multikrum": {"f": f}, "bulyan": {"f": f, "iterative": False},
            "trimmed_mean": {"beta": 0.2}, "filtering": {"eps": 0.2}, "spectral": {"eps": 0.2},
            "norm_clip": {"M": 1.0}}.get(name, {})


def flower_for(name: str, n: int):
    p = params(name, n)
    return {"mean": lambda: FedAvg(), "median": lambda: FedMedian(),
            "trimmed_mean": lambda: FedTrimmedAvg(beta=0.2),
            "krum": lambda: Krum(num_malicious_nodes=p.get("f", 0)),
            "multikrum": lambda: MultiKrum(num_malicious_nodes=p.get("f", 0), num_nodes_to_select=n - p.get("f", 0)),
            "bulyan": lambda: Bulyan(num_malicious_nodes=p.get("f", 0))}.get(name)


def timed(fn, repeats: int, setup=None) -> float:
    ts = []
    for _ in range(repeats):
        arg = setup() if setup else None
        t = time.perf_counter()
        fn(arg)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def replies_of(U: torch.Tensor, w: torch.Tensor) -> list[Message]:
    Un, wn = U.numpy(), w.numpy()
    return [Message(RecordDict({"arrays": ArrayRecord({"w": Array(Un[i])}),
                                "metrics": MetricRecord({"num-examples": float(wn[i])})}), 1, "train")
            for i in range(len(Un))]


def main() -> None:
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="d = 1e5 only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rules", default=",".join(AGGREGATORS.names()))
    ap.add_argument("--no-flower", action="store_true")
    args = ap.parse_args()
    _server_context()
    dims = [100_000] if args.quick else [100_000, 1_000_000]
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"{'rule':<15}{'n':>5}{'d':>10}{'ours s':>10}{'flower s':>10}{'ratio':>8}")
    for n in (20, 100):
        for d in dims:
            U = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
            U[: n // 5] += 3.0
            w = torch.randint(10, 100, (n,), generator=torch.Generator().manual_seed(1)).float()
            for name in args.rules.split(","):
                rule = get_aggregator(name, **params(name, n))
                g = torch.Generator().manual_seed(0)
                ours = timed(lambda _: rule(U, weights=w, generator=g), args.repeats)
                flower_s, ratio = "", ""
                make = None if args.no_flower else flower_for(name, n)
                if make is not None:
                    strat = make()
                    # Flower's Bulyan pops the arrays out of the replies: fresh replies per call.
                    fl = timed(lambda rs: strat.aggregate_train(1, rs), args.repeats,
                               setup=lambda: replies_of(U, w))
                    flower_s, ratio = f"{fl:10.3f}", f"{ours / fl:8.2f}"
                print(f"{name:<15}{n:>5}{d:>10}{ours:>10.3f}{flower_s:>10}{ratio:>8}", flush=True)
            del U


if __name__ == "__main__":
    main()

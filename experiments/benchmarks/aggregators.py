"""Seconds per call of every aggregation rule vs Flower's built-in equivalents.

    python experiments/benchmarks/aggregators.py [--quick] [--repeats 3] [--only krum,bulyan]

Same float32 inputs for both sides, CPU, torch's default thread count. Flower
functions are the pure ones its strategies use (aggregate_arrayrecords for
FedAvg/MultiKrum, np.median for FedMedian, trim_mean for FedTrimmedAvg,
select_multikrum (+aggregate_n_closest_weights) for Krum/MultiKrum/Bulyan), fed
one single-array ArrayRecord per client. --quick: d = 1e5 only.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fedsec.strategies import get_aggregator  # noqa: E402


def timeit(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def flower_fns(U: np.ndarray, w: np.ndarray, f: int):
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
    from flwr.serverapp.strategy.multikrum import select_multikrum
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    n = U.shape[0]
    # Array(ndarray) copies the bytes; built once, outside the timing
    recs = [RecordDict({"arrays": ArrayRecord({"w": Array(U[i])}),
                        "metrics": MetricRecord({"num-examples": float(w[i])})}) for i in range(n)]

    def bulyan():
        theta, beta = n - 2 * f, n - 4 * f
        sel = select_multikrum(recs, f, theta)
        arrs = [r["arrays"].to_numpy_ndarrays() for r in sel]
        med = [np.median(np.stack([a[0] for a in arrs]), axis=0)]
        return aggregate_n_closest_weights(med, arrs, beta)

    return {
        "mean": lambda: aggregate_arrayrecords(recs, "num-examples"),
        "median": lambda: np.median(U, axis=0),
        "trimmed_mean": lambda: trim_mean(U, 0.1),
        "krum": lambda: aggregate_arrayrecords(select_multikrum(recs, f, 1), "num-examples"),
        "multikrum": lambda: aggregate_arrayrecords(select_multikrum(recs, f, n - f), "num-examples"),
        "bulyan": bulyan,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="d = 1e5 only")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated rule names")
    ap.add_argument("--n", default="20,100")
    ap.add_argument("--d", default="")
    args = ap.parse_args()
    ns = [int(x) for x in args.n.split(",")]
    ds = [int(float(x)) for x in args.d.split(",")] if args.d else ([100_000] if args.quick else [100_000, 1_000_000])
    only = [x for x in args.only.split(",") if x]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}")
    print(f"{'rule':<14}{'n':>5}{'d':>9}{'fedsec s':>11}{'flower s':>11}{'ratio':>8}")
    for d in ds:
        for n in ns:
            f = max(1, (n - 3) // 4 // 2)  # Bulyan-valid, n >= 4f + 3
            g = torch.Generator().manual_seed(0)
            U = torch.randn(n, d, generator=g)
            w = torch.randint(1, 100, (n,), generator=g).float()
            params = {"krum": {"f": f}, "multikrum": {"f": f}, "bulyan": {"f": f},
                      "trimmed_mean": {"beta": 0.1}, "filtering": {"eps": 0.1},
                      "spectral": {"eps": 0.1}, "norm_clip": {"M": 1.0, "sigma": 0.01}}
            fl = flower_fns(U.numpy(), w.numpy(), f)
            from fedsec.strategies import AGGREGATORS

            for name in AGGREGATORS.names():
                if only and name not in only:
                    continue
                rule = get_aggregator(name, **params.get(name, {}))
                t = timeit(lambda: rule(U, weights=w, generator=torch.Generator().manual_seed(1)), args.repeats)
                tf = timeit(fl[name], args.repeats) if name in fl else None
                ratio = f"{t / tf:8.2f}" if tf else f"{'':>8}"
                tf_s = f"{tf:11.3f}" if tf is not None else f"{'-':>11}"
                print(f"{name:<14}{n:>5}{d:>9}{t:11.3f}{tf_s}{ratio}", flush=True)
                gc.collect()
            del U, fl
            gc.collect()


if __name__ == "__main__":
    main()

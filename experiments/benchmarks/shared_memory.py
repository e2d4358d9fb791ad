"""Memory per Ray actor with and without the shared training set (run.share_data).

Runs one round of a federation on ``scenes_cifar`` (digits_scenes tiled to CIFAR-10's
50,000 32x32 RGB images, 8-bit like CIFAR) with the ``ray`` engine, once with
``run.share_data = false`` (each actor loads its own float32 copy) and once with
``true`` (one uint8 copy in Ray's object store, mapped by every actor), and prints,
per actor, from /proc/<pid>/smaps_rollup: RSS, PSS (shared pages divided among the
processes mapping them) and USS (private pages: what the actor alone costs).

    OMP_NUM_THREADS=1 python experiments/benchmarks/shared_memory.py [--actors 4] [--n 50000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def smaps(pid: int) -> dict[str, int]:
    """bytes of RSS, PSS and USS (Private_Clean + Private_Dirty) of process ``pid``."""
    kb = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        k, v = line.split(":", 1)
        kb[k.strip()] = int(v.split()[0])
    return {"rss": kb["Rss"] * 1024, "pss": kb["Pss"] * 1024,
            "uss": (kb["Private_Clean"] + kb["Private_Dirty"]) * 1024}


def measure(share: bool, actors: int, clients: int, epochs: int, out: str) -> list[dict[str, int]]:
    import ray

    from fedsec import load_scenario, run
    from fedsec.federation import ray_engine

    ray_engine.shutdown()
    ray.init(num_cpus=actors, include_dashboard=False, logging_level="ERROR")
    s = load_scenario(HERE.parents[1] / "experiments" / "quickstart.toml", [
        'run.imports=["scenes_cifar"]', 'data.dataset="scenes_cifar"', f"data.num_clients={clients}",
        "server.rounds=1", f"client.epochs={epochs}", "client.batch_size=64", 'run.engine="ray"',
        f"run.share_data={'true' if share else 'false'}", 'data.partitioner="iid"'])
    # The same pool the run will use (same resources per client): measured idle first.
    pool = ray_engine.get_pool(s.run.num_cpus, s.run.num_gpus)
    pids = ray.get([a.__ray_call__.remote(lambda self: os.getpid()) for a in pool.actors])
    idle = [smaps(p) for p in pids]
    run(s, output=out)
    assert ray_engine._POOL["pool"] is pool
    got = [smaps(p) for p in pids]
    ray_engine.shutdown()
    return idle, got


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--actors", type=int, default=4)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--n", type=int, default=50000, help="training images (CIFAR-10: 50000)")
    ap.add_argument("--epochs", type=int, default=1)
    a = ap.parse_args()
    # Ray's workers inherit the driver's environment: they find scenes_cifar and its size.
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    os.environ["SCENES_CIFAR_N"] = str(a.n)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.path.insert(0, str(HERE))
    float_mb = a.n * 3 * 32 * 32 * 4 / 2**20
    print(f"scenes_cifar: {a.n} x 3x32x32 training images: float32 {float_mb:.0f} MiB, uint8 {float_mb / 4:.0f} MiB; "
          f"{a.actors} actors, {a.clients} clients, {a.epochs} local epoch(s), one round")
    rows = {}
    with tempfile.TemporaryDirectory() as out:
        for share in (False, True):
            rows[share] = measure(share, a.actors, a.clients, a.epochs, out)
    mib = 2**20
    print("\n| run.share_data | actor | idle USS MiB | after the round: RSS MiB | PSS MiB | USS (private) MiB |"
          "\n|---|---|---|---|---|---|")
    for share, (idle, got) in rows.items():
        for i, (m0, m) in enumerate(zip(idle, got)):
            print(f"| {str(share).lower()} | {i} | {m0['uss'] / mib:.0f} | {m['rss'] / mib:.0f} | "
                  f"{m['pss'] / mib:.0f} | {m['uss'] / mib:.0f} |")
    for share, (idle, got) in rows.items():
        mean = {k: sum(m[k] for m in got) / len(got) / mib for k in ("rss", "pss", "uss")}
        base = sum(m["uss"] for m in idle) / len(idle) / mib
        print(f"mean per actor, share_data={str(share).lower()}: idle USS {base:.0f} MiB; after: RSS "
              f"{mean['rss']:.0f}, PSS {mean['pss']:.0f}, USS {mean['uss']:.0f} MiB "
              f"(USS - idle: {mean['uss'] - base:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cost of a checkpoint relative to a round, and bytes written for metrics.jsonl.

    python experiments/benchmarks/checkpoint_cost.py [--rounds 2] [--clients 4]

For each setting it runs a short federation (inline engine), then times
``checkpointing.save`` of its final state (median of 5) against the median
round time from metrics.jsonl, and prints the ratio (issue 20 asks for a
default under 5%: ``run.checkpoint_every = 0`` checkpoints only when the time
since the last one is at least 20x its cost, so the ratio is bounded whatever
the model).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fedsec import load_scenario, run
from fedsec.federation import checkpointing


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4)
    a = ap.parse_args()
    settings = {
        "quickstart (digits, cnn)": [],
        "digits_scenes, resnet18": ['data.dataset="digits_scenes"', 'model.name="resnet18"'],
    }
    print(f"{'setting':28s} {'params':>10s} {'round s':>9s} {'ckpt s':>8s} {'ratio':>7s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in settings.items():
            s = load_scenario("experiments/quickstart.toml", [
                'run.engine="inline"', f"server.rounds={a.rounds}", f"data.num_clients={a.clients}",
                "client.epochs=1", f'run.output="{tmp}"', *extra])
            res = run(s)
            rounds = [r["seconds"] for r in res.history]
            state = res.model.state_dict()
            times = []
            for _ in range(5):
                t = time.perf_counter()
                checkpointing.save(Path(res.run_dir), round=a.rounds, state=state, initial={}, parts={})
                times.append(time.perf_counter() - t)
            n = sum(v.numel() for v in state.values())
            rt, ct = statistics.median(rounds), statistics.median(times)
            print(f"{name:28s} {n:>10d} {rt:>9.3f} {ct:>8.4f} {ct / rt:>7.2%}")


if __name__ == "__main__":
    main()

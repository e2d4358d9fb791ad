"""Bytes written for a long run's metrics.jsonl: rewritten whole each round (before) vs appended (after).

    OMP_NUM_THREADS=1 python experiments/benchmarks/metrics_io.py --rounds 2000 --clients 20

Rows are synthetic but shaped like the quickstart's (every field a real row
has, ``--clients`` partition ids in ``sampled``/``accepted``, a per-class
accuracy list, ``--malicious`` attackers with scores). Bytes are counted two
ways that must agree: the kernel's ``wchar`` (bytes passed to write(2), from
/proc/self/io) and the file sizes each method writes by construction. The
directory defaults to /dev/shm so the measurement does not load a shared disk;
fsync is a no-op there, so the wall times printed are a lower bound on disk.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from fedsec.results import METRICS, RunWriter, atomic_write, dumps


def synthetic_row(rnd: int, clients: int, malicious: int, rng: random.Random) -> dict:
    ids = list(range(clients))
    bad = ids[:malicious]
    return {
        "round": rnd, "clean_acc": rng.random(), "asr": {"badnets": rng.random()} if malicious else {},
        "sampled": ids, "accepted": [i for i in ids if i not in bad or rng.random() < 0.3],
        "malicious": bad,
        "detection": {"precision": rng.random(), "recall": rng.random(), "fpr": rng.random()},
        "failed": [], "nonfinite": [], "seconds": rng.random() * 2,
        **({"scores": {str(i): rng.random() for i in ids}} if malicious else {}),
        "train_loss": rng.random(), "test_loss": rng.random(),
        "per_class_acc": [rng.random() for _ in range(10)],
        "train_seconds": rng.random(), "agg_seconds": rng.random() / 50, "eval_seconds": rng.random() / 100,
        "bytes_received": 3062560,
    }


def wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("no wchar in /proc/self/io")


def before(path: Path, rows: list[dict]) -> int:
    """The previous RunWriter.append_round: the whole file rewritten atomically every round."""
    written, kept = 0, []
    for r in rows:
        kept.append(r)
        text = "".join(dumps(x) + "\n" for x in kept)
        atomic_write(path, text)
        written += len(text.encode())
    return written


def after(writer: RunWriter, rows: list[dict]) -> int:
    written = 0
    for r in rows:
        writer.append_round(r)
        written += len((dumps(r) + "\n").encode())
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=20, help="partition ids per round (sampled)")
    ap.add_argument("--malicious", type=int, default=4)
    ap.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    a = ap.parse_args()
    rng = random.Random(0)
    rows = [synthetic_row(r, a.clients, a.malicious, rng) for r in range(1, a.rounds + 1)]
    with tempfile.TemporaryDirectory(dir=a.dir) as d:
        w0, t0 = wchar(), time.perf_counter()
        old = before(Path(d) / "old" / METRICS, rows)
        w1, t1 = wchar(), time.perf_counter()
        writer = RunWriter(Path(d) / "new", "run")
        w2, t2 = wchar(), time.perf_counter()
        new = after(writer, rows)
        w3, t3 = wchar(), time.perf_counter()
        size = (writer.path / METRICS).stat().st_size
    line = size / a.rounds
    print(f"{a.rounds} rounds, {a.clients} clients, mean line {line:.0f} bytes, final metrics.jsonl {size:,} bytes")
    print(f"before (rewrite whole, atomic): {old:>15,} bytes by construction, {w1 - w0:>15,} by wchar, "
          f"{t1 - t0:7.2f} s")
    print(f"after  (append one line):       {new:>15,} bytes by construction, {w3 - w2:>15,} by wchar, "
          f"{t3 - t2:7.2f} s")
    print(f"ratio before/after: {old / new:,.0f}x (theory (R+1)/2 = {(a.rounds + 1) / 2:,.1f})")


if __name__ == "__main__":
    main()

"""A backdoored pretrained model as the federation's starting point (Gu et al. 2017, Sec. 5).

``craft_backdoor`` trains a BadNets-backdoored CNN on attacker data (a random
half of the digits train split) and saves it as safetensors; the federation
then starts from it (``model.init``) with every client honest (the ``pretrained``
entry only declares the trigger the server measures; its partition trains
honestly). Reported: ASR at round 0 (``summary["initial"]``) and after each of
N honest rounds, under FedAvg and coordinate-wise median.

    .venv/bin/python experiments/attacks/pretrained.py \
        [--clients 10 --rounds 8 --epochs 2 --craft-epochs 10]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from fedsec.clients.attacks.pretrained import craft_backdoor
from fedsec import load_scenario, run
from fedsec.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--craft-epochs", type=int, default=10)
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="/tmp/runs-backdoor")
    a = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    train = load_dataset("digits", "data").train
    half = torch.randperm(len(train), generator=torch.Generator().manual_seed(a.seed))[: len(train) // 2]
    ckpt = Path(a.output) / "pretrained-backdoor.safetensors"
    t0 = time.perf_counter()
    info = craft_backdoor(ckpt, data=train.subset(half.numpy()), target=0, poison_fraction=a.p,
                          epochs=a.craft_epochs, seed=a.seed)
    craft_s = time.perf_counter() - t0
    print(f"crafted {ckpt} in {craft_s:.1f}s on {len(half)} attacker samples, p = {a.p}, "
          f"3x3 patch -> class 0: clean acc {info['clean_acc']:.3f}, ASR {info['asr']:.3f}\n")

    hist, init = {}, {}
    for agg in ("mean", "median"):
        s = load_scenario("experiments/quickstart.toml", [
            f"server.rounds={a.rounds}", f"data.num_clients={a.clients}", f"client.epochs={a.epochs}",
            f"run.seed={a.seed}", f'server.aggregator="{agg}"', f'model.init="{ckpt}"',
            'attack=[{behaviour="pretrained", partitions=[0], params={target=0}}]'])
        r = run(s, output=a.output)
        hist[agg], init[agg] = r.history, r.summary["initial"]
    print(f"digits, {a.clients} clients (Dirichlet 0.5), all honest, {a.epochs} local epochs, "
          f"start = crafted checkpoint\n")
    print("round |  mean acc   asr | median acc   asr")
    print(f"{0:5d} | {init['mean']['clean_acc']:9.3f} {init['mean']['asr']['pretrained']:5.3f} | "
          f"{init['median']['clean_acc']:10.3f} {init['median']['asr']['pretrained']:5.3f}")
    for i in range(a.rounds):
        m, d = hist["mean"][i], hist["median"][i]
        print(f"{i + 1:5d} | {m['clean_acc']:9.3f} {m['asr']['pretrained']:5.3f} | "
              f"{d['clean_acc']:10.3f} {d['asr']['pretrained']:5.3f}")


if __name__ == "__main__":
    main()

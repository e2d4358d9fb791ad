"""Blind backdoor by loss poisoning (Bagdasaryan & Shmatikov, USENIX Security 2021,
arXiv:2005.03823): high ASR without a single poisoned sample in any dataset.

Part 1 (one client, ``local_train``): the whole digits train split, honest loss
vs the code-poisoning loss (fixed weights 0.5/0.5, and MGDA-balanced).
Part 2 (federation, ``fedsec.run``): 20 iid clients, 4 attackers (20%) whose
*training code* is poisoned, FedAvg, vs no attack.

    .venv/bin/python experiments/attacks/code_poisoning.py [--skip-fl]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from fedsec.clients import ClientTask, TrainConfig, get_behaviour, local_train
from fedsec.data import load_dataset
from fedsec.metrics import EvalTrigger, accuracy, attack_success_rate
from fedsec.models import build_model
from fedsec.seeding import generator, scoped_seed


def part1(seed: int, epochs: int) -> None:
    ds = load_dataset("digits")
    print(f"Part 1: one client, all {len(ds.train)} digits, {epochs} epochs, cnn; trigger 3x3 bottom-right -> 0")
    print("loss                 | poisoned samples in data | clean acc | ASR   | seconds")
    for label, name, params in [("honest", "honest", {}), ("blind, fixed 0.5", "code_poisoning", {}),
                                ("blind, MGDA", "code_poisoning", {"mgda": True})]:
        with scoped_seed(seed, "init"):
            model = build_model("cnn", in_shape=(1, 8, 8), num_classes=10)
        b = get_behaviour(name, **params)
        c = ClientTask(partition_id=0, server_round=1, num_clients=1, num_sampled=1, num_classes=10,
                       in_shape=(1, 8, 8), coalition=(0,), generator=generator(seed, "cp"),
                       device=torch.device("cpu"), global_state={}, model=model, data=ds.train,
                       config=TrainConfig(epochs=epochs, batch_size=32, lr=0.05, momentum=0.9))
        t0 = time.perf_counter()
        local_train(b, c)
        seen = c.data  # what the loop trained on, after prepare
        n_poisoned = int((seen.x != ds.train.x).flatten(1).any(1).sum() + (seen.y != ds.train.y).sum())
        trig = EvalTrigger(get_behaviour("code_poisoning").trigger.apply, target=0)
        print(f"{label:20} | {n_poisoned:24d} | {accuracy(model, ds.test):9.3f} | "
              f"{attack_success_rate(model, ds.test, trig):.3f} | {time.perf_counter() - t0:6.1f}")
    print()


def part2(seed: int, rounds: int) -> None:
    from fedsec import load_scenario, run

    base = [f"server.rounds={rounds}", "data.num_clients=20", "client.epochs=2", f"run.seed={seed}",
            'data.partitioner="iid"']
    runs = {
        "none": [],
        "code_poisoning": ['attack=[{behaviour="code_poisoning", partitions=[0, 1, 2, 3]}]'],
    }
    hist = {}
    for name, extra in runs.items():
        hist[name] = run(load_scenario("experiments/quickstart.toml", base + extra),
                         output="/tmp/runs-code-poisoning").history
    print(f"Part 2: 20 clients (iid), attackers = partitions [0, 1, 2, 3] (20%) every round, FedAvg, "
          f"{rounds} rounds x 2 epochs")
    print("round | no attack acc | code_poisoning acc | ASR")
    for i in range(rounds):
        a, b = hist["none"][i], hist["code_poisoning"][i]
        print(f"{i + 1:5d} | {a['clean_acc']:13.3f} | {b['clean_acc']:18.3f} | {b['asr']['code_poisoning']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--skip-fl", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    part1(a.seed, a.epochs)
    if not a.skip_fl:
        part2(a.seed, a.rounds)


if __name__ == "__main__":
    main()

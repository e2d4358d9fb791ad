"""Bit-flip attacks on the small CNN (digits): flips to near-chance, and one flipping client in FL.

Part 1 (no federation): train the scenario's CNN honestly on the digits train
split (through ``local_train``), then run the progressive bit search of Rakin et
al. (BFA, ICCV 2019, arXiv:1903.12269) on int8-quantised weights with 128
attacker samples. Prints test accuracy after 0, 1, 2, ... flips and the number
of flipped bits (= int8 Hamming distance) needed to reach near-chance accuracy;
then the targeted (TBT-style) variant: flips until triggered inputs go to class 0.

Part 2 (federation, ``fedsec.run``): 10 clients, partition 0 runs ``bitflip``
(BFA after honest training) or ``bitflip_random`` (random exponent-bit faults)
every round, starting from Part 1's trained CNN (``model.init``); FedAvg
("mean") vs coordinate-wise "median". A run whose global model blows up (all
updates non-finite) is reported as diverged.

    .venv/bin/python experiments/attacks/bitflip.py [--skip-fl]
"""

from __future__ import annotations

import argparse
import logging
import copy
import time

import torch

from fedsec.clients import ClientTask, TrainConfig, get_behaviour, local_train
from fedsec.data import load_dataset
from fedsec.metrics import EvalTrigger, accuracy, attack_success_rate
from fedsec.models import build_model
from fedsec.seeding import generator, scoped_seed


def task_for(model, data, seed: int, epochs: int = 10) -> ClientTask:
    return ClientTask(
        partition_id=0, server_round=1, num_clients=1, num_sampled=1, num_classes=10, in_shape=(1, 8, 8),
        coalition=(0,), generator=generator(seed, "bitflip-exp"), device=torch.device("cpu"),
        global_state={k: v.detach().clone() for k, v in model.state_dict().items()},
        model=model, data=data, config=TrainConfig(epochs=epochs, batch_size=32, lr=0.05, momentum=0.9),
    )


INIT = "/tmp/bitflip-pretrained-cnn.safetensors"


def part1(seed: int) -> None:
    ds = load_dataset("digits")
    with scoped_seed(seed, "init"):
        model = build_model("cnn", in_shape=(1, 8, 8), num_classes=10)
    local_train(get_behaviour("honest"), task_for(model, ds.train, seed))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, INIT)  # Part 2 starts from it
    attacker = ds.train.subset(torch.arange(128))
    print(f"Part 1: cnn (width 16, hidden 64), trained 10 epochs on {len(ds.train)} digits; "
          f"float test acc {accuracy(model, ds.test):.3f}")
    print("untargeted BFA (top_k=1 candidate per layer, 128 attacker samples, stop at acc <= 0.11):")
    print("  max_flips | flipped bits (Hamming) | attacker-batch acc | test acc")
    for budget in [0, 1, 2, 4, 8, 16, 24, 32, 48, 64]:
        m = copy.deepcopy(model)
        b = get_behaviour("bitflip", train_first=False, max_flips=budget)
        c = task_for(m, attacker, seed)
        t0 = time.perf_counter()
        b.finalize(c)  # train_first=False: attack the received model with the attacker's data
        stats = c.metrics
        print(f"  {budget:9d} | {int(stats['flipped_bits']):22d} | {stats['attack_accuracy']:18.3f} | "
              f"{accuracy(m, ds.test):8.3f}   ({time.perf_counter() - t0:.1f}s)")
        if stats["attack_accuracy"] <= 0.11 and budget:
            print(f"  -> near chance after {int(stats['flipped_bits'])} flipped bits "
                  f"of {sum(p.numel() * 8 for n, p in m.named_parameters() if p.ndim >= 2)}")
            break
    b = get_behaviour("bitflip", mode="targeted", target=0, train_first=False, max_flips=40)
    trig = EvalTrigger(b.trigger.apply, target=0)
    m = copy.deepcopy(model)
    c = task_for(m, attacker, seed)
    asr0 = attack_success_rate(m, ds.test, trig)
    b.finalize(c)
    stats = c.metrics
    print(f"targeted (3x3 trigger -> class 0): test ASR {asr0:.3f} -> {attack_success_rate(m, ds.test, trig):.3f} "
          f"after {int(stats['flipped_bits'])} flipped bits; clean test acc {accuracy(m, ds.test):.3f}\n")


def part2(seed: int, rounds: int) -> None:
    from fedsec import load_scenario, run

    base = [f"server.rounds={rounds}", "data.num_clients=10", "client.epochs=1", f"run.seed={seed}",
            f'model.init="{INIT}"']
    attacks = {
        "none": [],
        "bitflip (BFA, <=30 flips)": ['attack=[{behaviour="bitflip", partitions=[0], params={max_flips=30}}]'],
        "bitflip_random (10 exp.)": ['attack=[{behaviour="bitflip_random", partitions=[0]}]'],
    }
    print(f"Part 2: 10 clients (Dirichlet 0.5), global model initialised with Part 1's trained CNN, "
          f"1 attacker (partition 0) every round, {rounds} rounds x 1 epoch")
    print("attack                    | aggregator | final clean acc | min acc over rounds")
    for name, extra in attacks.items():
        for agg in ["mean", "median"]:
            try:
                r = run(load_scenario("experiments/quickstart.toml",
                                      base + extra + [f'server.aggregator="{agg}"']), output="/tmp/runs-bitflip")
            except ValueError as e:  # every update non-finite: the global model itself blew up
                print(f"{name:25} | {agg:10} | diverged: {e}")
                continue
            accs = [row["clean_acc"] for row in r.history]
            print(f"{name:25} | {agg:10} | {accs[-1]:15.3f} | {min(accs):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-fl", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    part1(a.seed)
    if not a.skip_fl:
        part2(a.seed, a.rounds)


if __name__ == "__main__":
    main()

"""Feature-collision clean-label poisoning (Shafahi et al., "Poison Frogs!", NeurIPS 2018,
arXiv:1804.00792) on digits.

Part 1, the paper's transfer-learning setting (one victim, ``local_train``):
a CNN is pretrained on half of the digits train split; the victim then
retrains only the classifier head (features frozen) on the other half plus the
attacker's poisons: base-class (1) images, labels untouched, crafted to collide
with one target test instance in the frozen feature space. For each of
``--targets`` target instances (correctly classified, class != 1) it prints
whether the target is classified as the base class after fine-tuning, with and
without poisons.

Part 2 (federation, ``fedsec.run``, end-to-end training): 10 iid clients start
from Part 1's pretrained CNN (``model.init``); partition 0 runs
``feature_collision`` every round (watermarked poisons crafted against that
round's global model) for the first ``--fl-targets`` targets of Part 1; prints
per round whether the global model classifies the target as the base class.

    .venv/bin/python experiments/attacks/feature_collision.py [--skip-fl]
"""

from __future__ import annotations

import argparse
import logging
import copy

import torch

from fedsec.clients import ClientTask, TrainConfig, get_behaviour, local_train
from fedsec.data import load_dataset
from fedsec.metrics import accuracy, predict
from fedsec.models import build_model
from fedsec.seeding import generator, scoped_seed

BASE = 1
INIT = "/tmp/fc-pretrained-cnn.safetensors"


def task_for(model, data, seed: int, key: object) -> ClientTask:
    return ClientTask(
        partition_id=0, server_round=1, num_clients=1, num_sampled=1, num_classes=10, in_shape=(1, 8, 8),
        coalition=(0,), generator=generator(seed, "fc", key), device=torch.device("cpu"),
        global_state={k: v.detach().clone() for k, v in model.state_dict().items()},
        model=model, data=data, config=TrainConfig(epochs=10, batch_size=32, lr=0.05, momentum=0.9),
    )


def part1(seed: int, targets: int, num_poisons: int, opacity: float) -> list[int]:
    ds = load_dataset("digits")
    n = len(ds.train)
    pre, fine = ds.train.subset(torch.arange(n // 2)), ds.train.subset(torch.arange(n // 2, n))
    with scoped_seed(seed, "init"):
        model = build_model("cnn", in_shape=(1, 8, 8), num_classes=10)
    local_train(get_behaviour("honest"), task_for(model, pre, seed, "pre"))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, INIT)  # Part 2 starts from it
    pred = predict(model, ds.test.x)
    cands = [i for i in range(len(ds.test)) if int(ds.test.y[i]) != BASE and int(pred[i]) == int(ds.test.y[i])]
    g = torch.Generator().manual_seed(seed)
    chosen = [cands[int(j)] for j in torch.randperm(len(cands), generator=g)[:targets]]
    print(f"Part 1 (transfer learning): features pretrained on {len(pre)} digits (test acc "
          f"{accuracy(model, ds.test):.3f}); head retrained 10 epochs on {len(fine)} clean digits "
          f"+ {num_poisons} poisons of base class {BASE} (opacity {opacity}, 300 FBS iterations)")
    print("target idx (class) | clean fine-tune -> pred | poisoned fine-tune -> pred | clean test acc | "
          "feature dist")
    hits = 0
    for i in chosen:
        preds = []
        for poisoned in (False, True):
            m = copy.deepcopy(model)
            for name, p in m.named_parameters():
                p.requires_grad_(name.startswith(str(len(m) - 1)))  # head only (nn.Sequential)
            b = get_behaviour("feature_collision", target_index=i, base_class=BASE, num_poisons=num_poisons,
                              opacity=opacity, iterations=300) if poisoned else get_behaviour("honest")
            stats = local_train(b, task_for(m, fine, seed, i))
            preds.append((int(predict(m, ds.test.x[i : i + 1])[0]), accuracy(m, ds.test),
                          stats.get("feature_distance", float("nan"))))
        hits += preds[1][0] == BASE
        print(f"{i:10d} ({int(ds.test.y[i])})    | {preds[0][0]:23d} | {preds[1][0]:26d} | "
              f"{preds[1][1]:14.3f} | {preds[1][2]:.3f}")
    print(f"attack success (target -> base class {BASE}): {hits}/{len(chosen)}\n")
    return chosen


def part2(seed: int, rounds: int, targets: list[int], num_poisons: int) -> None:
    from fedsec import load_scenario, run

    base = [f"server.rounds={rounds}", "data.num_clients=10", "client.epochs=1", f"run.seed={seed}",
            "data.partitioner=\"iid\"", f'model.init="{INIT}"']
    print(f"Part 2 (FL, end-to-end fine-tuning): 10 clients (iid), global model initialised with Part 1's "
          f"pretrained CNN, partition 0 crafts {num_poisons} watermarked poisons against each round's "
          f"global model, FedAvg, {rounds} rounds x 1 epoch")
    print("target idx (class) | target -> base per round | final clean acc")
    hits = 0
    for i in targets:
        atk = [f'attack=[{{behaviour="feature_collision", partitions=[0], '
               f'params={{target_index={i}, base_class={BASE}, num_poisons={num_poisons}}}}}]']
        r = run(load_scenario("experiments/quickstart.toml", base + atk), output="/tmp/runs-fc")
        ind = [int(row["asr"]["feature_collision"]) for row in r.history]
        hits += ind[-1]
        print(f"{i:10d} ({int(load_dataset('digits').test.y[i])})    | {' '.join(map(str, ind)):24} | "
              f"{r.history[-1]['clean_acc']:.3f}")
    print(f"attack success after round {rounds}: {hits}/{len(targets)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", type=int, default=8)
    ap.add_argument("--poisons", type=int, default=20)
    ap.add_argument("--opacity", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--fl-targets", type=int, default=3)
    ap.add_argument("--skip-fl", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    chosen = part1(a.seed, a.targets, a.poisons, a.opacity)
    if not a.skip_fl:
        part2(a.seed, a.rounds, chosen[: a.fl_targets], a.poisons)


if __name__ == "__main__":
    main()

"""The two default changes of issue 19 on real inputs: Min-Sum's bound and ALIE's z_max.

Min-Sum (Shejwalkar & Houmansadr, NDSS 2021): ten honest digits-CNN updates
(one local epoch from one initial model, 140 samples each); partitions 0-1 are
the attackers. Prints how far the Min-Sum update lies from the benign mean with
the authors' bound (``threshold="min"``, the default) and with fedsec's old
bound (``"max"``), for each perturbation.

ALIE (Baruch et al., NeurIPS 2019): z_max = Phi^-1((n - m - s) / (n - m)),
s = floor(n/2 + 1) - m, next to the old Phi^-1((n - s) / n), for a few (n, m).

    .venv/bin/python experiments/attacks/omniscient_defaults.py
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from fedsec.clients import ClientTask, TrainConfig, get_behaviour, local_train
from fedsec.clients.attacks.omniscient import alie_z
from fedsec.data import load_dataset
from fedsec.models import build_model
from fedsec.seeding import scoped_seed


def honest_updates(n: int = 10, per: int = 140) -> torch.Tensor:
    ds = load_dataset("digits")
    with scoped_seed(0, "omniscient-defaults-init"):
        init = build_model("cnn", in_shape=(1, 8, 8), num_classes=10).state_dict()
    rows = []
    for i in range(n):
        m = build_model("cnn", in_shape=(1, 8, 8), num_classes=10)
        m.load_state_dict(init)
        t = ClientTask(partition_id=i, server_round=1, num_clients=n, num_sampled=n, num_classes=10,
                       in_shape=(1, 8, 8), coalition=(i,), generator=torch.Generator().manual_seed(i),
                       device=torch.device("cpu"), global_state=init, model=m,
                       data=ds.train.subset(torch.arange(i * per, (i + 1) * per)),
                       config=TrainConfig(epochs=1, batch_size=32, lr=0.05, momentum=0.9))
        local_train(get_behaviour("honest"), t)
        rows.append(torch.cat([(m.state_dict()[k] - init[k]).flatten() for k, _ in m.named_parameters()]))
    return torch.stack(rows)


def main() -> None:
    torch.set_num_threads(1)
    U = honest_updates()
    att = torch.zeros(len(U), dtype=torch.bool)
    att[:2] = True
    mu = U[~att].double().mean(0)
    print(f"Min-Sum on {len(U)} digits-CNN updates (d = {U.shape[1]}), attackers = rows 0-1")
    print("perturbation | ||mal - mu||, bound max (old) | bound min (authors') | ratio")
    for pert in ("std", "unit_vec", "sign"):
        d = {}
        for th in ("max", "min"):
            out = get_behaviour("minsum", perturbation=pert, threshold=th).craft(U, att, torch.Generator())
            d[th] = float((out[0].double() - mu).norm())
        print(f"{pert:12s} | {d['max']:29.4f} | {d['min']:20.4f} | {d['max'] / d['min']:.2f}")
    print("\nALIE z_max:   n   m   s | Phi^-1((n-m-s)/(n-m)) (now) | Phi^-1((n-s)/n) (before)")
    for n, m in [(10, 2), (20, 4), (50, 12), (100, 20), (100, 45)]:
        s = math.floor(n / 2 + 1) - m
        old = NormalDist().inv_cdf(min(max((n - s) / n, 0.5), 1 - 1e-6))
        print(f"            {n:3d} {m:3d} {s:3d} | {alie_z(n, m):27.4f} | {old:.4f}")


if __name__ == "__main__":
    main()

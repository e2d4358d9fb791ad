"""False-positive rate of the new rules on attack-free rounds: the fraction of honest
clients NOT accepted, over `--draws` rounds of n honest updates of dimension d.
Two honest models: isotropic Gaussian updates around a common mean, and
heterogeneous ones (each client adds its own offset of the size of the noise).
Usage: OMP_NUM_THREADS=1 python experiments/benchmarks/rules_fpr.py [--n 20] [--d 40000] [--draws 10]"""
import argparse

import torch

from fedsec.strategies import get_aggregator

ap = argparse.ArgumentParser()
ap.add_argument("--n", type=int, default=20)
ap.add_argument("--d", type=int, default=40_000)
ap.add_argument("--draws", type=int, default=10)
a = ap.parse_args()
f = a.n // 5
RULES = {
    "dnc": {"f": f}, "signguard": {}, "clipped_clustering": {"history": False}, "mda": {"f": min(f, 3)},
    "meamed": {"f": f}, "fltrust": {}, "sever(fraction=0.1)": {}, "sever(threshold=8,iter=5)":
    {"fraction": None, "threshold": 8.0, "iterations": 5}, "tukey": {}, "flame": {"lam": 0.0},
}
print(f"n={a.n} d={a.d} draws={a.draws} f={f}; FPR = honest clients rejected / honest clients")
for hetero in (False, True):
    print("honest model:", "heterogeneous (own offset per client)" if hetero else "isotropic Gaussian")
    for label, kw in RULES.items():
        name = label.split("(")[0]
        rej = 0
        for t in range(a.draws):
            g = torch.Generator().manual_seed(1000 + t)
            mu = 0.5 * torch.randn(a.d, generator=g)
            U = mu + torch.randn(a.n, a.d, generator=g)
            if hetero:
                U = U + torch.randn(a.n, a.d, generator=g)
            ref = mu + torch.randn(a.d, generator=g)        # the server's root-set update: one more honest draw
            rule = get_aggregator(name, **kw)
            extra = {"reference": ref} if rule.needs_reference else {}
            out = rule(U, generator=torch.Generator().manual_seed(t), **extra)
            rej += int((~out.accepted).sum())
        print(f"  {label:28s} FPR {rej / (a.n * a.draws):.3f}")

"""Untargeted model poisoning vs robust aggregation on digits: final clean accuracy.

Attacks (rows): no attack; label_flip (Fang et al. USENIX Sec 2020); sign_flip
(Li et al. AAAI 2019); gaussian (Blanchard et al. NeurIPS 2017); ALIE (Baruch
et al. NeurIPS 2019) with the paper's z_max from n and f, and with z = 1.5
(the authors' code's default); IPM with epsilon 0.5 and 100 (Xie et al. UAI
2019); MinMax and MinSum (Shejwalkar & Houmansadr NDSS 2021; MinSum with the
authors' bound, the minimum benign sum of squared distances, and with the
maximum, fedsec's bound before issue 19). Rules
(columns): mean (FedAvg), coordinate-wise median, Krum with f = number of
attackers. ``--attackers`` of the ``--clients`` clients (partitions 0..k-1, 20%
by default) attack in every round; all clients are sampled every round.

    .venv/bin/python experiments/attacks/byzantine.py \
        [--clients 10 --rounds 8 --epochs 2 --sigma 1.0 --engine inline]

With 10 clients and 2 attackers ALIE's z_max is 0 (s = 4 of the 8 correct
clients must lie beyond the malicious value, so it sits at their mean): the
default row is then no attack at all, and the z = 1.5 row shows the attack.

Expected from the papers: ALIE lowers median/Krum below mean-with-no-attack;
IPM with a small epsilon defeats Krum/median (the malicious update is close to
the honest ones) while a large epsilon wrecks the mean; a large Gaussian
destroys the mean but not median/Krum.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from fedsec import load_scenario, run


def attacks(sigma: float) -> dict[str, tuple[str, str] | None]:
    """Row label -> (behaviour, TOML params table) or None for no attack."""
    return {
        "none": None,
        "label_flip": ("label_flip", "{}"),
        "sign_flip": ("sign_flip", "{}"),
        f"gaussian s={sigma:g}": ("gaussian", f"{{sigma={sigma}}}"),
        "alie": ("alie", "{}"),
        "alie z=1.5": ("alie", "{z=1.5}"),
        "ipm eps=0.5": ("ipm", "{epsilon=0.5}"),
        "ipm eps=100": ("ipm", "{epsilon=100.0}"),
        "minmax": ("minmax", "{}"),
        "minsum": ("minsum", "{}"),
        "minsum max": ("minsum", '{threshold="max"}'),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--attackers", type=int, default=0, help="0 = 20%% of the clients")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew")
    ap.add_argument("--sigma", type=float, default=1.0, help="gaussian attack's sigma")
    ap.add_argument("--rules", default="mean,median,krum")
    ap.add_argument("--only", default="", help="comma-separated row labels to run (default all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="/tmp/runs-byzantine")
    ap.add_argument("--engine", default="inline", help="run.engine (every engine gives the same model)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    k = a.attackers or max(1, round(0.2 * a.clients))
    parts = list(range(k))
    rules = a.rules.split(",")
    rows = attacks(a.sigma)
    if a.only:
        rows = {r: v for r, v in rows.items() if r in a.only.split(",")}
    base = [f"server.rounds={a.rounds}", f"data.num_clients={a.clients}", f"data.alpha={a.alpha}",
            f"client.epochs={a.epochs}", f"run.seed={a.seed}", f'run.engine="{a.engine}"']
    print(f"digits, {a.clients} clients ({k} attackers: partitions {parts}), {a.rounds} rounds x "
          f"{a.epochs} local epochs, Dirichlet alpha={a.alpha}, seed={a.seed}", flush=True)
    table: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    for label, spec in rows.items():
        table[label] = {}
        for rule in rules:
            over = base + [f'server.aggregator="{rule}"']
            if rule in ("krum", "multikrum", "bulyan"):
                over.append(f"server.aggregator_params={{f={k}}}")
            if spec is not None:
                over.append(f'attack=[{{behaviour="{spec[0]}", partitions={parts}, params={spec[1]}}}]')
            t = time.perf_counter()
            try:
                r = run(load_scenario("experiments/quickstart.toml", over), output=a.output)
            except ValueError as e:  # the global model went non-finite: every later update is NaN
                if "no finite client update" not in str(e):
                    raise
                table[label][rule] = float("nan")
                print(f"  {label:16s} {rule:8s} diverged ({e})", flush=True)
                continue
            acc = r.history[-1]["clean_acc"]
            table[label][rule] = acc
            curve = " ".join(f"{h['clean_acc']:.2f}" for h in r.history)
            print(f"  {label:16s} {rule:8s} final {acc:.3f}  [{curve}]  "
                  f"({time.perf_counter() - t:.1f}s)", flush=True)
    print(f"\nfinal clean accuracy ({time.perf_counter() - t0:.0f}s total)")
    print(f"{'attack':18s}" + "".join(f"{r:>9s}" for r in rules) + "   (nan = global model diverged)")
    for label, accs in table.items():
        print(f"{label:18s}" + "".join(f"{accs[r]:9.3f}" for r in rules))


if __name__ == "__main__":
    main()

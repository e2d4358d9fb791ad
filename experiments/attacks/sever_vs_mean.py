"""SEVER (Diakonikolas et al., ICML 2019) against the plain mean on a corrupted federation.

    python experiments/attacks/sever_vs_mean.py [--rounds 10] [--seeds 0 1]

10 clients on the bundled digits (IID), 3 of them corrupted (gaussian noise updates, sign
flip, and ALIE with z = 1.5); prints the final clean accuracy of `mean`, `sever` and
`tukey` under each corruption and with none (the false-positive side: what SEVER's
filtering costs when nobody attacks).
"""

from __future__ import annotations

import argparse
import tempfile

from fedsec import load_scenario, run

ATTACKS = {"none": None, "gaussian": '{behaviour="gaussian", partitions=[0, 1, 2]}',
           "sign_flip": '{behaviour="sign_flip", partitions=[0, 1, 2]}',
           "alie z=1.5": '{behaviour="alie", partitions=[0, 1, 2], params={z=1.5}}'}
RULES = {"mean": "{}", "sever": "{}", "sever x3": "{iterations=3}", "tukey": "{}"}
"""``sever x3`` runs the paper's filter three times (it iterates until no outlier is left;
the default one pass removes a fraction of 0.1, too little for 30% corruption)."""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    a = ap.parse_args()
    print(f"| attack | {' | '.join(RULES)} |\n|---|" + "---:|" * len(RULES))
    with tempfile.TemporaryDirectory() as tmp:
        for name, attack in ATTACKS.items():
            cells = []
            for label, params in RULES.items():
                rule = label.split()[0]
                accs = []
                for seed in a.seeds:
                    sets = ['run.engine="inline"', "data.num_clients=10", 'data.partitioner="iid"',
                            f"server.rounds={a.rounds}", "client.epochs=2", f'server.aggregator="{rule}"', f"server.aggregator_params={params}",
                            f"run.seed={seed}", f'run.output="{tmp}"']
                    if attack:
                        sets.append(f"attack=[{attack}]")
                    accs.append(run(load_scenario("experiments/quickstart.toml", sets)).summary["final_clean_acc"])
                cells.append(f"{sum(accs) / len(accs):.3f}")
            print(f"| {name} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()

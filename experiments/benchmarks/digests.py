"""Digest of the final global model for the quickstart and one small run per behaviour.

Regression net for refactors that must not change results: the same scenario and
seed must give the bitwise-same model. ``python experiments/benchmarks/digests.py
[--out FILE] [--check FILE]`` prints ``name sha256`` lines; ``--check`` compares
against a recorded file and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile

import torch


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cases():
    from fedsec import load_scenario

    base = {"data.num_clients": 6, "server.rounds": 2, "client.epochs": 1, "run.engine": "inline"}
    yield "quickstart", lambda: load_scenario("experiments/quickstart.toml", ["run.engine=\"inline\""])
    attacks = {
        "badnets": {}, "dba": {}, "model_replacement": {}, "code_poisoning": {},
        "bitflip": {"max_flips": 5}, "bitflip_random": {}, "feature_collision": {},
        "label_flip": {}, "sign_flip": {}, "gaussian": {}, "alie": {}, "ipm": {},
        "minmax": {}, "minsum": {},
    }
    q = load_scenario("experiments/quickstart.toml")
    for name, params in attacks.items():
        yield name, lambda name=name, params=params: q.replace(
            **base, name=f"d-{name}", attack=[{"behaviour": name, "partitions": [0, 1], "params": params}])
    for rule in ["median", "krum", "foolsgold", "centered_clip", "flame"]:
        yield f"rule-{rule}", lambda rule=rule: q.replace(**base, name=f"r-{rule}", **{"server.aggregator": rule})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--check")
    ap.add_argument("--only", nargs="*")
    a = ap.parse_args()
    from fedsec import run

    got = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, s in cases():
            if a.only and name not in a.only:
                continue
            try:
                r = run(s().replace(**{"run.output": tmp}))
                got[name] = digest(r.model)
            except Exception as e:  # recorded so a crash is a difference too
                got[name] = f"error: {type(e).__name__}: {e}"[:200]
            print(name, got[name], flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(got, f, indent=1)
    if a.check:
        ref = json.load(open(a.check))
        bad = [k for k in got if ref.get(k) != got[k]]
        for k in bad:
            print(f"DIFF {k}: {ref.get(k)} -> {got[k]}")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

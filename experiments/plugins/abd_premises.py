"""Check ABD's two premises on a saved backdoored global model.

ABD (Hong et al., ICML 2023) rests on two measurable assumptions about the teacher:

1. Shuffling Vaccine: permuting the input channels of the last conv layers destroys
   clean features but leaves the backdoor path working, so the suspicion score
   ``S(x) = KL(T(x) || T~(x))`` is low on triggered inputs. The paper's Figure 4a
   reports an AUC of 0.984 separating triggered from clean inputs by S.
2. Self-Retrospection: the universal perturbation ``delta`` that most changes the
   (backdoored) model's output within a small norm ball is the trigger, so making
   the student invariant to ``delta`` removes the backdoor.

This script measures both on real test images with the plugin's own functions:
the AUC of ``-S`` (triggered = positive) for several shuffles, and, for several
bounds ``eps``, where ``sr_find_delta``'s delta sends the test set (to the
target class, or anywhere) and how much of its energy lies on the trigger's pixels.

    python experiments/plugins/abd_premises.py runs/<abd run>/model.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from fedsec.federation.env import dataset_of, new_model, scenario_from_toml
from fedsec.federation.server import eval_triggers_of
from fedsec.plugins.abd import ABD, ShuffledTeacher, channel_head, sr_find_delta, suspicion_score
from fedsec.seeding import generator


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", help="a run's model.safetensors (scenario embedded, with a trigger attack)")
    ap.add_argument("--shuffles", type=int, default=8)
    ap.add_argument("--eps", default="0.5,1,2,3", help="L2 bounds on delta")
    ap.add_argument("--sv-head", action=argparse.BooleanOptionalAction, default=None,
                    help="also shuffle the head's channel blocks (default: the scenario's sv_head)")
    args = ap.parse_args(argv)
    with safe_open(args.model, "pt") as f:
        s = scenario_from_toml((f.metadata() or {})["scenario"])
    model = new_model(s)
    model.load_state_dict(load_file(args.model))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = ABD(**s.plugins[0].params).config() if s.plugins and s.plugins[0].name == "abd" else ABD().config()
    cfg = cfg.seeded(s.run.seed)  # the seed the plugin used in that run
    ds = dataset_of(s)
    name, trig = next(iter(eval_triggers_of(s).items()))
    target = trig.target
    keep = ds.test.y != target
    clean, poisoned = ds.test.x[keep], trig.apply(ds.test.x[keep])
    with torch.no_grad():
        acc = float((model(ds.test.x).argmax(1) == ds.test.y).float().mean())
        asr = float((model(poisoned).argmax(1) == target).float().mean())
    print(f"{args.model}: trigger {name}, acc {acc:.3f}, ASR {asr:.3f}")

    if args.sv_head is not None:
        cfg = dataclasses.replace(cfg, sv_head=args.sv_head)
    head = channel_head(model, clean) if cfg.sv_head else None
    print(f"\n1. Shuffling Vaccine (sv_layers={cfg.sv_layers}, sv_head={cfg.sv_head}, ensemble {cfg.sv_ensemble}); "
          "paper AUC 0.984")
    print("| shuffle | AUC | mean S clean | mean S triggered | T~ agrees with T: clean | triggered "
          "| T~ predicts the target: all clean | T~ agrees with T: clean target class |")
    print("|---|---|---|---|---|---|---|---|")
    own = ds.test.y == target  # clean images of the target class
    aucs = []
    for i in range(args.shuffles):
        sh = ShuffledTeacher(model, n_layers=cfg.sv_layers, n=cfg.sv_ensemble, gen=generator(cfg.seed, "premise", i),
                             head=head)
        sc, sp = suspicion_score(model, sh, clean), suspicion_score(model, sh, poisoned)
        auc = roc_auc_score([0] * len(sc) + [1] * len(sp), (-torch.cat([sc, sp])).numpy())
        aucs.append(auc)
        with torch.no_grad():
            ac = float((model(clean).argmax(1) == sh(clean).argmax(1)).float().mean())
            ap_ = float((model(poisoned).argmax(1) == sh(poisoned).argmax(1)).float().mean())
            # a shuffled teacher that falls back on the target marks genuine target-class images suspicious too
            to_target = float((sh(ds.test.x).argmax(1) == target).float().mean())
            a_own = float((model(ds.test.x[own]).argmax(1) == sh(ds.test.x[own]).argmax(1)).float().mean())
        print(f"| {i} | {auc:.3f} | {float(sc.mean()):.3f} | {float(sp.mean()):.3f} | {ac:.2f} | {ap_:.2f} "
              f"| {to_target:.2f} | {a_own:.2f} |")
    print(f"median AUC {sorted(aucs)[len(aucs) // 2]:.3f}")

    support = (trig.apply(ds.test.x[:1]) != ds.test.x[:1]) | (trig.apply(torch.zeros_like(ds.test.x[:1])) != 0)
    share = float(support.float().mean())
    print(f"\n2. Self-Retrospection delta on the backdoored model (sr_n_delta={cfg.sr_n_delta}, "
          f"Adam lr {cfg.sr_delta_lr}); trigger support = {share:.3f} of the pixels")
    print("| eps | sent to target | misclassified | delta energy on trigger support |")
    print("|---|---|---|---|")
    for eps in (float(e) for e in args.eps.split(",")):
        d = sr_find_delta(model, ds.test.x[:128].clone(), dataclasses.replace(cfg, sr_eps=eps),
                          generator(cfg.seed, "premise", "delta"))
        with torch.no_grad():
            pred = model(ds.test.x + d).argmax(1)
        on = float(d.pow(2)[support.expand_as(d)].sum() / d.pow(2).sum())
        print(f"| {eps:g} | {float((pred == target).float().mean()):.2f} | "
              f"{float((pred != ds.test.y).float().mean()):.2f} | {on:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

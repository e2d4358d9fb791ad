"""Audit detectors: do they reproduce their papers' directions on data we can run?

    OMP_NUM_THREADS=1 python experiments/plugins/audit.py [--dataset digits] [--seeds 3]
        [--sections nc,prune,data,frequency,bitflip] [--json out.json] [size flags, see --help]

Sections (each prints a markdown table; results and commentary: audit.md):

``nc``
    Neural Cleanse (Wang et al. S&P 2019) on global models of federations (default:
    10 clients, Dirichlet(1.0), plain FedAvg, the `cnn`, 10 rounds): with BadNets
    clients (default 4; 3x3 white corner patch -> class 0, 30% of every batch), and
    the same federation without attackers, one per seed. Paper: the backdoored models are flagged
    (anomaly index > 2) with the right target; clean models are not (false positives).
    The reversal runs the reference's schedule to its early stop (``--nc-passes`` caps the
    steps). Flagged models are repaired by unlearning (the paper's Sec. VI-C mitigation),
    against the paper's control, the same fine-tuning without the reversed trigger. The
    table ends with how often the MAD test flags C i.i.d. normal norms (its own null).
``prune``
    Fine-pruning (Liu et al. RAID 2018) of the same global models with the server's
    clean half of the test split (``--server-fraction``): ASR and accuracy before, after
    pruning only, with 90% of the last conv layer's channels pruned (the paper's premise:
    the backdoor lives in channels dormant on clean data), after fine-pruning with
    fine-tuning at lr 0.01 and 0.05, and the paper's control, fine-tuning alone.
    ``--model-cache DIR`` saves the federations' global models and reuses them (the
    federations are deterministic, so the figures do not change).
``data``
    A client audits its own data: per seed an IID 720-sample share of the train split and
    the clients of a Dirichlet(0.5) split (label skew), each clean and BadNets-poisoned so
    that the poisons make 10% and 30% of the target label; a local model trained on it.
    Activation clustering (Chen et al. 2019), spectral signatures (Tran et al. NeurIPS
    2018) and the frequency detector (Zeng et al. ICCV 2021): verdicts on poisoned shares
    (true positives, right target) and on clean shares (false positives), the recall of
    the poisons and the fraction of clean samples removed; the model retrained on what
    the default AC / SS keep gives the ASR after sanitizing (IID shares). Seeds start at
    ``--data-first-seed`` 4: seeds 0-3 chose the verdict thresholds.
``frequency``
    The DCT-spectrum classifier trained on clean images and self-made triggers (random
    squares and noise blends) is evaluated on triggers it never saw: the BadNets square,
    a cross, a fixed blend pattern, and a smooth (low-frequency) trigger that Zeng et al.
    Sec. 5 design to evade it.
``sanitize``
    Federations of 4 IID clients where 2 are victims of a data-collection attack (3% of
    their data BadNets-poisoned, `per = "dataset"`): as is, and as `sanitizing` clients
    that audit their data each round (a local model trained from the global one) and
    drop what activation clustering or spectral signatures flag. Final ASR and accuracy.
``bitflip``
    Post-deployment progressive bit search (Rakin et al. ICCV 2019) on the final global
    model, the fine-pruned model and the ABD-distilled student (one federation with the
    plugins ``abd``, ``fine_pruning``, ``bitflip_deploy``).

CPU scale: everything runs on the `inline` engine with OMP_NUM_THREADS=1.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
import math
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

import fedsec
from fedsec.audit import AuditTarget, get_detector
from fedsec.audit.features import channel_activity, last_conv
from fedsec.audit.fine_pruning import FinePruning
from fedsec.audit.frequency import FrequencyDetector
from fedsec.audit.neural_cleanse import NeuralCleanse
from fedsec.audit.plugins import server_split
from fedsec.audit.stats import auc, min_index_threshold
from fedsec.audit.unlearning import unlearn
from fedsec.data import TensorData, load_dataset
from fedsec.data.triggers import Trigger
from fedsec.metrics import EvalTrigger, accuracy, attack_success_rate
from fedsec.models import build_model
from fedsec.scenario import Scenario
from fedsec.seeding import generator, scoped_seed
from fedsec.training import sgd_train

TRIGGER = Trigger(kind="patch", size=3)
TARGET = 0


def pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def federation(args, seed: int, attacked: bool, out: Path, plugins: list[dict] | None = None):
    s = Scenario.from_dict({
        "name": f"audit-{'bd' if attacked else 'clean'}-{seed}",
        "data": {"dataset": args.dataset, "num_clients": args.num_clients, "partitioner": args.partitioner,
                 **({"partitioner_params": {"alpha": 1.0}} if args.partitioner == "dirichlet" else {})},
        "model": {"name": "cnn", "params": dict(args.model_params)},
        "client": {"epochs": args.local_epochs, "batch_size": 32, "lr": 0.05},
        "server": {"rounds": args.rounds, "aggregator": "mean"},
        "attack": ([{"behaviour": "badnets", "partitions": list(range(args.attackers)),
                     "params": {"target": TARGET, "poison_fraction": 0.3, "trigger": TRIGGER.to_spec()}}]
                   if attacked else []),
        "plugins": plugins or [],
        "run": {"seed": seed, "engine": "inline", "output": str(out)},
    })
    return fedsec.run(s)


def audit_target(model, clean, ev, ds, seed, **kw) -> AuditTarget:
    return AuditTarget(model=model, clean=clean, evaluation=ev, num_classes=ds.num_classes, in_shape=ds.in_shape,
                       generator=generator(seed, "audit-experiment"), **kw)


# --------------------------------------------------------------------------------------
# nc + prune: global models of federations


def global_model(args, seed: int, attacked: bool, out: Path):
    """The federation's final global model; with ``--model-cache`` saved once and reloaded after."""
    path = None
    if args.model_cache:
        tag = (f"{args.dataset}-r{args.rounds}-n{args.num_clients}-a{args.attackers}-{args.partitioner}"
               f"-e{args.local_epochs}{model_tag(args)}-{'bd' if attacked else 'clean'}-{seed}.pt")
        path = Path(args.model_cache) / tag
        if path.is_file():
            ds = load_dataset(args.dataset)
            with scoped_seed(seed, "audit-cache"):
                model = build_model("cnn", in_shape=ds.in_shape, num_classes=ds.num_classes, **args.model_params)
            model.load_state_dict(torch.load(path, weights_only=True))
            return model.eval()
    model = federation(args, seed, attacked, out).model.cpu().eval()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model


def model_tag(args) -> str:
    """'' for the default `cnn` (so caches made before --model-params stay valid), else '-width48...'."""
    return "".join(f"-{k}{v}" for k, v in sorted(args.model_params.items()))


def section_models(args, out: Path, figures: dict) -> None:
    ds = load_dataset(args.dataset)
    trig = {"badnets": EvalTrigger(TRIGGER.apply, target=TARGET)}
    nc_rows, fp_rows = [], []
    for seed in range(args.seeds):
        clean, ev = server_split(ds.test, args.server_fraction, seed)
        for attacked in (True, False):
            t0 = time.perf_counter()
            model = global_model(args, seed, attacked, out)
            acc, asr = accuracy(model, ev), attack_success_rate(model, ev, trig["badnets"])
            t_fed = time.perf_counter() - t0
            row = {"seed": seed, "attacked": attacked, "acc": acc, "asr": asr}
            if "nc" in args.sections:
                t0 = time.perf_counter()
                nc = NeuralCleanse(passes=args.nc_passes, step_samples=args.nc_step_samples,
                                   restarts=args.nc_restarts, mitigate="unlearn")
                t = audit_target(model, clean, ev, ds, seed, eval_triggers=trig, out_dir=out / "nc",
                                 prefix=f"{seed}-{attacked}.")
                per_class, n_clean = nc.triggers(t)  # what nc.repair(t) does, with the reversal kept
                verdict = nc.verdict(per_class, n_clean, t)
                _, r = nc.mitigation(t, per_class, verdict)
                # Sec. VI-B's other mitigation on the same reversed triggers (it draws no randomness)
                _, rp = replace(nc, mitigate="prune").mitigation(t, per_class, verdict)
                row.update(flagged=r.flagged, target=r.target, index=r.score, norms=r.figures["l1_norms"],
                           steps=r.figures["passes"], mitigation=r.figures["mitigation"],
                           pruning=rp.figures["mitigation"], p_min=r.figures["p_value_min"],
                           nc_seconds=time.perf_counter() - t0)
                # the paper's control: the same fine-tuning without the reversed trigger
                ft = unlearn(model, clean, epochs=nc.unlearn_epochs, lr=nc.unlearn_lr, momentum=nc.unlearn_momentum,
                             weight_decay=0.0, batch_size=nc.batch_size, generator=generator(seed, "nc-control"),
                             device="cpu")
                row["ft_control"] = {"acc": accuracy(ft, ev), "asr": attack_success_rate(ft, ev, trig["badnets"])}
                nc_rows.append(row)
            if "prune" in args.sections:
                fp_rows.append(prune_row(args, model, clean, ev, ds, seed, trig, attacked))
            print(f"  seed {seed} {'backdoored' if attacked else 'clean'}: acc {pct(acc)} ASR {pct(asr)} "
                  f"(federation {t_fed:.0f}s)" + (f", NC index {row['index']:.2f} target {row['target']} "
                                                 f"({row['nc_seconds']:.0f}s)" if "index" in row else ""), flush=True)
    if nc_rows:
        figures["nc"] = nc_rows
        print(nc_table(nc_rows))
    if fp_rows:
        figures["prune"] = fp_rows
        print(fp_table(fp_rows))


def nc_table(rows: list[dict]) -> str:
    lines = ["| seed | model | acc | ASR | anomaly index | flagged | target | min-norm class "
             "| L1: target class / median | steps (median) | unlearned: acc / ASR | fine-tuned only: acc / ASR "
             "| p (min of C) | neurons pruned: acc / ASR (pruned) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        norms = r["norms"]
        m = r["mitigation"]
        unl = f"{pct(m['after']['acc'])} / {pct(m['after']['asr']['badnets'])}" if m["applied"] else "not flagged"
        pr = r["pruning"]
        pru = (f"{pct(pr['after']['acc'])} / {pct(pr['after']['asr']['badnets'])} ({len(pr['pruned'])}/{pr['neurons']})"
               if pr["applied"] else "not flagged")
        lines.append(f"| {r['seed']} | {'BadNets' if r['attacked'] else 'clean'} | {pct(r['acc'])} | {pct(r['asr'])} | "
                     f"{r['index']:.2f} | {'yes' if r['flagged'] else 'no'} | {r['target']} | "
                     f"{min(range(len(norms)), key=norms.__getitem__)} | {norms[TARGET]:.1f} / "
                     f"{sorted(norms)[len(norms) // 2 - 1] / 2 + sorted(norms)[len(norms) // 2] / 2:.1f} | "
                     f"{sorted(r['steps'])[len(r['steps']) // 2]} | {unl} | "
                     f"{pct(r['ft_control']['acc'])} / {pct(r['ft_control']['asr'])} | {r['p_min']:.3f} | {pru} |")
    bd = [r for r in rows if r["attacked"]]
    cl = [r for r in rows if not r["attacked"]]
    tp = sum(r["flagged"] and r["target"] == TARGET for r in bd)
    fp = sum(r["flagged"] for r in cl)
    lines.append("")
    lines.append(f"BadNets models flagged with the right target: {tp}/{len(bd)}; "
                 f"clean models flagged (false positives): {fp}/{len(cl)}")
    done = [r for r in bd if r["mitigation"]["applied"]]
    if done:
        lines.append(f"unlearning on the {len(done)} flagged BadNets models: acc "
                     f"{pct(_mean([r['mitigation']['before']['acc'] for r in done]))} -> "
                     f"{pct(_mean([r['mitigation']['after']['acc'] for r in done]))}, ASR "
                     f"{pct(_mean([r['mitigation']['before']['asr']['badnets'] for r in done]))} -> "
                     f"{pct(_mean([r['mitigation']['after']['asr']['badnets'] for r in done]))} (fine-tuned only: "
                     f"{pct(_mean([r['ft_control']['acc'] for r in done]))} / "
                     f"{pct(_mean([r['ft_control']['asr'] for r in done]))})")
    if done:
        lines.append(f"neuron pruning (Sec. VI-B) on the same {len(done)} models: acc "
                     f"{pct(_mean([r['pruning']['after']['acc'] for r in done]))}, ASR "
                     f"{pct(_mean([r['pruning']['after']['asr']['badnets'] for r in done]))}, neurons pruned "
                     f"{_mean([len(r['pruning']['pruned']) for r in done]):.1f} of {done[0]['pruning']['neurons']}")
    n = len(rows[0]["norms"])
    for fpr in (0.05, 0.10):
        cut = min_index_threshold(n, fpr)
        lines.append(f"calibrated verdict (smallest index > {cut:.2f}, i.e. p (min of C) < {fpr}): BadNets flagged "
                     f"{sum(r['index'] > cut and r['target'] == TARGET for r in bd)}/{len(bd)}, clean flagged "
                     f"{sum(r['index'] > cut for r in cl)}/{len(cl)}")
    lines.append(f"MAD test under its own null (the {n} norms i.i.d. normal): P(anomaly index of the smallest > 2) = "
                 f"{pct(null_flag_rate(n))}%")
    return "\n".join(lines) + "\n"


def null_flag_rate(n_classes: int, threshold: float = 2.0) -> float:
    """How often the MAD test flags when the C norms are i.i.d. normal (no outlier at all)."""
    from fedsec.audit.stats import min_index_p_value

    return min_index_p_value(threshold, n_classes)


def prune_row(args, model, clean, ev, ds, seed, trig, attacked) -> dict:
    """Fine-pruning at two fine-tuning rates, and the fine-tuning-only control (Liu et al.'s comparison)."""
    import copy

    row: dict[str, Any] = {"seed": seed, "attacked": attacked}
    _, r = FinePruning(epochs=args.fp_epochs, lr=0.05).repair(audit_target(model, clean, ev, ds, seed,
                                                                          eval_triggers=trig))
    f = r.figures
    row_pruned = list(f["pruned"])
    row.update(pruned=len(f["pruned"]), channels=f["channels"], before=f["before"], pruned_only=f["after_pruning"],
               fp_lr05=f["after_fine_tuning"])
    _, r = FinePruning(epochs=args.fp_epochs, lr=0.01).repair(audit_target(model, clean, ev, ds, seed,
                                                                          eval_triggers=trig))
    row["fp_lr01"] = r.figures["after_fine_tuning"]
    ft = copy.deepcopy(model)
    sgd_train(ft, clean, epochs=args.fp_epochs, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0,
              generator=generator(seed, "audit-experiment"), device="cpu")
    row["ft_lr05"] = {"acc": accuracy(ft, ev), "asr": {"badnets": attack_success_rate(ft, ev, trig["badnets"])}}
    # Liu et al.'s premise (backdoor neurons dormant on clean data): ASR with 90% of the channels gone
    _, r = FinePruning(prune_ratio=0.9, epochs=0).repair(audit_target(model, clean, ev, ds, seed, eval_triggers=trig))
    row["pruned90"] = r.figures["after_pruning"]
    if attacked:
        row["dormancy"] = trigger_dormancy(model, clean, ev, torch.tensor(row_pruned))
    return row


def trigger_dormancy(model, clean, ev, pruned: torch.Tensor) -> dict:
    """Liu et al.'s premise, measured: where in the clean-activation ranking the trigger's extra
    activation lands. ``share``: fraction of the (positive) extra mean activation that the triggered
    non-target evaluation images add in the last conv layer, carried by the channels the stop rule
    pruned (the most dormant on clean data); ``rho``: Spearman correlation, over channels, of clean
    activation and that extra activation (< 0: the trigger uses dormant channels)."""
    conv = last_conv(model)[1]
    x = ev.x[ev.y != TARGET]
    a = channel_activity(model, conv, clean.x).double()
    d = (channel_activity(model, conv, TRIGGER.apply(x)) - channel_activity(model, conv, x)).double().clamp_min(0)

    def ranks(v: torch.Tensor) -> torch.Tensor:
        return torch.argsort(torch.argsort(v, stable=True)).double()

    ra, rd = ranks(a) - ranks(a).mean(), ranks(d) - ranks(d).mean()
    rho = float((ra * rd).sum() / ((ra.square().sum() * rd.square().sum()).sqrt() + 1e-12))
    half = torch.sort(a, stable=True).indices[: len(a) // 2]
    return {"share": float(d[pruned].sum() / d.sum().clamp_min(1e-12)) if len(pruned) else 0.0,
            "share_bottom_half": float(d[half].sum() / d.sum().clamp_min(1e-12)), "rho": rho}


def fp_table(rows: list[dict]) -> str:
    keys = ["before", "pruned_only", "pruned90", "fp_lr01", "fp_lr05", "ft_lr05"]
    names = ["before", "pruned only", "90% pruned", "fine-pruned (lr 0.01)", "fine-pruned (lr 0.05)",
             "fine-tuned only (lr 0.05)"]
    lines = ["| seed | model | pruned | " + " | ".join(f"{n}: acc / ASR" for n in names) + " |",
             "|---|---|---|" + "---|" * len(keys)]
    for r in rows:
        lines.append(f"| {r['seed']} | {'BadNets' if r['attacked'] else 'clean'} | {r['pruned']}/{r['channels']} | "
                     + " | ".join(f"{pct(r[k]['acc'])} / {pct(r[k]['asr']['badnets'])}" for k in keys) + " |")
    bd = [r for r in rows if r["attacked"]]
    if bd:
        lines.append("| mean | BadNets | | " + " | ".join(
            f"{pct(_mean([r[k]['acc'] for r in bd]))} / {pct(_mean([r[k]['asr']['badnets'] for r in bd]))}"
            for k in keys) + " |")
    dm = [r for r in bd if "dormancy" in r]
    if dm:
        lines.append("")
        lines.append("trigger's extra last-conv activation (BadNets models; share in the channels the stop rule "
                     "pruned / in the clean-least-active half; Spearman rho of clean activation vs trigger's extra): "
                     + "; ".join(f"seed {r['seed']}: {pct(r['dormancy']['share'])}% / "
                                 f"{pct(r['dormancy']['share_bottom_half'])}%, rho {r['dormancy']['rho']:+.2f}"
                                 for r in dm))
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# data: a client audits its own data


def poison(data: TensorData, count: int, g: torch.Generator) -> tuple[TensorData, torch.Tensor]:
    """BadNets on a copy: ``count`` non-target samples stamped and relabelled to TARGET."""
    cand = (data.y != TARGET).nonzero().flatten()
    idx = cand[torch.randperm(len(cand), generator=g)[:count]]
    x, y = data.x.clone(), data.y.clone()
    x[idx], y[idx] = TRIGGER.apply(x[idx]), TARGET
    bad = torch.zeros(len(y), dtype=torch.bool)
    bad[idx] = True
    return TensorData(x, y), bad


def local_model(data: TensorData, ds, seed: int, epochs: int):
    with scoped_seed(seed, "audit-exp-init"):
        net = build_model("cnn", in_shape=ds.in_shape, num_classes=ds.num_classes)
    sgd_train(net, data, epochs=epochs, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0,
              generator=generator(seed, "audit-exp-train"), device="cpu")
    return net.eval()


DATA_DETECTORS = {
    "AC, paper: ica 10 dims, ART sil > 0.10": ("activation_clustering", {"nb_dims": 10, "silhouette_threshold": 0.10}),
    "AC, paper: ica 10 dims, sil > 0.42": ("activation_clustering", {"nb_dims": 10}),
    "AC default: ica 3 dims, sil > 0.42": ("activation_clustering", {}),
    "AC pca 10 dims, sil > 0.42": ("activation_clustering", {"reduce": "pca", "nb_dims": 10}),
    "SS eps=0.1": ("spectral_signatures", {"eps": 0.1}),
    "SS eps=0.3": ("spectral_signatures", {"eps": 0.3}),
    "frequency, fraction verdict": ("frequency", {"target_fpr": 0.05, "verdict": "fraction"}),
    "frequency, pooled Fisher verdict": ("frequency", {"target_fpr": 0.05, "stratify": False}),
    "frequency, stratified verdict (per-label exact MH)": ("frequency", {"target_fpr": 0.05}),
}
RETRAINED = ("AC default: ica 3 dims, sil > 0.42", "SS eps=0.3")


def client_shares(ds, seed: int, args) -> dict[str, torch.Tensor]:
    """Train-split row indices of the audited client shares of one seed: an IID share and the
    clients of a Dirichlet(alpha) split (label skew, what FL clients hold)."""
    from fedsec.data.partition import partition

    perm = torch.randperm(len(ds.train), generator=generator(seed, "audit-exp-share"))
    shares = {"iid": perm[: args.client_size]}
    parts = partition("dirichlet", ds.train.y.numpy(), args.dirichlet_clients, seed=seed, alpha=args.dirichlet_alpha)
    shares.update({f"dirichlet {i}": torch.as_tensor(p) for i, p in enumerate(parts)})
    return shares


def section_data(args, figures: dict) -> None:
    ds = load_dataset(args.dataset)
    trig = EvalTrigger(TRIGGER.apply, target=TARGET)
    levels = [float(v) for v in args.poison_levels.split(",")]
    names = [k for k in DATA_DETECTORS if args.data_detectors == "all" or DATA_DETECTORS[k][0] in args.data_detectors]
    rows = []
    for seed in range(args.data_first_seed, args.data_first_seed + args.seeds):
        _, ev = server_split(ds.test, 0.5, seed)
        for kind, idx in client_shares(ds, seed, args).items():
            share = ds.train.subset(idx)
            outside = torch.ones(len(ds.train), dtype=torch.bool)
            outside[idx] = False
            rest = outside.nonzero().flatten()
            reference = ds.train.subset(rest[torch.randperm(len(rest), generator=generator(seed, "audit-exp-ref"))
                                             [: args.freq_clean]])
            n_target = int((share.y == TARGET).sum())
            for level in [0.0, *levels]:
                # `level`: the poisons' share of the target label after poisoning (Chen et al.'s 10-33%)
                count = int(round(level / (1 - level) * n_target))
                if level > 0 and count < 3:
                    continue  # the share holds (almost) no target label: no backdoor to plant
                data, bad = poison(share, count, generator(seed, "audit-exp-poison"))
                t0 = time.perf_counter()
                model = local_model(data, ds, seed, args.local_train_epochs)
                base = {"acc": accuracy(model, ev), "asr": attack_success_rate(model, ev, trig)}
                for label in names:
                    name, params = DATA_DETECTORS[label]
                    if name == "frequency" and args.freq_val_fraction is not None:
                        params = {**params, "val_fraction": args.freq_val_fraction}
                    clean_ref = reference if name == "frequency" else share
                    r = get_detector(name, **params).audit(audit_target(model, clean_ref, ev, ds, seed, data=data,
                                                                        poisoned=bad))
                    f = r.figures
                    row = {"seed": seed, "share": kind, "level": level, "detector": label, "flagged": r.flagged,
                           "score": r.score, "target": r.target, "recall": f.get("recall"),
                           "clean_removed": f.get("clean_removed"), "p_value": f.get("p_value"),
                           "n_poisoned": int(bad.sum()), "n": len(data),
                           "before": base}
                    if level > 0 and args.retrain and kind == "iid" and label in RETRAINED:
                        keep = torch.ones(len(data), dtype=torch.bool)
                        keep[f["removed"]] = False
                        m2 = local_model(data.subset(keep.nonzero().flatten()), ds, seed, args.local_train_epochs)
                        row["after"] = {"acc": accuracy(m2, ev), "asr": attack_success_rate(m2, ev, trig)}
                    rows.append(row)
                print(f"  seed {seed} {kind} share ({len(data)} samples, {count} poisons = {pct(level)}% of label "
                      f"{TARGET}): local model acc {pct(base['acc'])} ASR {pct(base['asr'])} "
                      f"({time.perf_counter() - t0:.0f}s)", flush=True)
    figures["data"] = rows
    print(data_table(rows, levels))


def _mean(v: list) -> float:
    v = [x for x in v if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return sum(v) / len(v) if v else float("nan")


def data_table(rows: list[dict], levels: list[float]) -> str:
    """Verdicts on poisoned shares (true positives, right target) and on clean shares (false positives)."""
    def frac(rs: list[dict], cond) -> str:
        return f"{sum(bool(cond(r)) for r in rs)}/{len(rs)}"

    head = ["detector"] + [f"{pct(v)}% poisons: flagged (target {TARGET})" for v in levels] + [
        "recall of poisons", "clean removed (poisoned shares)", "clean IID shares flagged",
        "clean Dirichlet shares flagged", "clean removed (clean shares)", "ASR before -> after retraining (IID)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label in dict.fromkeys(r["detector"] for r in rows):
        rs = [r for r in rows if r["detector"] == label]
        p = [r for r in rs if r["level"] > 0]
        c = [r for r in rs if r["level"] == 0]
        after = [r for r in p if "after" in r]
        cells = [label]
        for v in levels:
            pv = [r for r in p if r["level"] == v]
            right = sum(r["flagged"] and r["target"] == TARGET for r in pv)
            cells.append(f"{frac(pv, lambda r: r['flagged'])} ({right})")
        cells += [pct(_mean([r["recall"] for r in p])), pct(_mean([r["clean_removed"] for r in p])),
                  frac([r for r in c if r["share"] == "iid"], lambda r: r["flagged"]),
                  frac([r for r in c if r["share"] != "iid"], lambda r: r["flagged"]),
                  pct(_mean([r["clean_removed"] for r in c])),
                  (f"{pct(_mean([r['before']['asr'] for r in after]))} -> "
                   f"{pct(_mean([r['after']['asr'] for r in after]))}" if after else "-")]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = sorted({r["seed"] for r in rows})
    p = [r for r in rows if r["level"] > 0 and r["detector"] == rows[0]["detector"]]
    lines.append("")
    lines.append(f"seeds {seeds[0]}-{seeds[-1]}; {len(p)} poisoned and "
                 f"{sum(r['level'] == 0 and r['detector'] == rows[0]['detector'] for r in rows)} clean shares; "
                 f"local models: ASR {pct(_mean([r['before']['asr'] for r in p]))}% on poisoned shares, "
                 f"acc {pct(_mean([r['before']['acc'] for r in rows]))}%")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# frequency: unseen triggers


def smooth_trigger(shape: tuple[int, int, int]) -> Trigger:
    """A low-frequency blend (Zeng et al. Sec. 5's point: smooth triggers leave no high-frequency artifact)."""
    c, h, w = shape
    r = torch.arange(h, dtype=torch.float32)[:, None] / h
    s = torch.arange(w, dtype=torch.float32)[None, :] / w
    pat = (0.5 + 0.5 * torch.sin(2 * math.pi * (r + s))).expand(c, h, w)
    return Trigger(kind="pattern", mask=torch.full((c, h, w), 0.3).tolist(), pattern=pat.tolist())


def section_frequency(args, figures: dict) -> None:
    ds = load_dataset(args.dataset)
    tests = {"BadNets 3x3 square": TRIGGER,
             "3x3 cross, top left": Trigger(kind="patch", size=3, shape="cross", location="top_left"),
             "blend, fixed pattern, alpha 0.2": Trigger(kind="blend", alpha=0.2, seed=7),
             "smooth sinusoid blend, alpha 0.3": smooth_trigger(ds.in_shape)}
    rows = []
    for seed in range(args.seeds):
        perm = torch.randperm(len(ds.train), generator=generator(seed, "audit-exp-freq"))
        train = ds.train.x[perm[: args.freq_clean]]
        _, ev = server_split(ds.test, 0.5, seed)
        det = FrequencyDetector()
        t0 = time.perf_counter()
        g = generator(seed, "audit-exp-frequency")
        clf = det.fit(train, g)
        n_val = len(ev) // 2  # calibrate the 5%-FPR threshold on one half, measure on the other
        p_val = clf.prob(ev.x[:n_val])
        thr = float(torch.quantile(p_val.double(), 0.95))
        p_clean = clf.prob(ev.x[n_val:])
        for name, t in tests.items():
            p = clf.prob(t.apply(ev.x[n_val:]))
            rows.append({"seed": seed, "trigger": name, "auc": auc(p, p_clean),
                         "tpr_05": float((p > 0.5).float().mean()), "fpr_05": float((p_clean > 0.5).float().mean()),
                         "tpr_cal": float((p > thr).float().mean()), "fpr_cal": float((p_clean > thr).float().mean())})
        print(f"  seed {seed}: trained on {len(train)} clean images ({time.perf_counter() - t0:.0f}s)", flush=True)
    figures["frequency"] = rows
    lines = ["| unseen trigger | AUC | TPR / FPR at P > 0.5 | TPR / FPR at the 5%-FPR threshold |", "|---|---|---|---|"]
    for name in tests:
        rs = [r for r in rows if r["trigger"] == name]
        lines.append(f"| {name} | {_mean([r['auc'] for r in rs]):.3f} | {pct(_mean([r['tpr_05'] for r in rs]))} / "
                     f"{pct(_mean([r['fpr_05'] for r in rs]))} | {pct(_mean([r['tpr_cal'] for r in rs]))} / "
                     f"{pct(_mean([r['fpr_cal'] for r in rs]))} |")
    print("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------
# bitflip: plain vs fine-pruned vs ABD student, through the plugins


def section_bitflip(args, out: Path, figures: dict) -> None:
    plugins = [
        {"name": "abd", "params": {"kd": "generator", "sv": True, "sr": False, "compare": False,
                                   "steps": args.abd_steps, "batch_size": 128, "n_student_iter": 5, "gen_width": 32,
                                   "sv_layers": 1, "sv_head": True, "sv_probe_steps": 20, "sv_select": False,
                                   "sv_alpha": 0.3, "seed": 0}},
        {"name": "fine_pruning", "params": {"epochs": args.fp_epochs}},
        {"name": "bitflip_deploy", "params": {"max_flips": args.flip_budget, "stop_on": "budget",
                                              "compare": ["fine_pruning", "abd"]}},
    ]
    rows = {}
    for attacked in (True, False):
        t0 = time.perf_counter()
        res = federation(args, 0, attacked, out, plugins)
        p = res.summary["plugins"]
        rows["backdoored" if attacked else "clean"] = {"bitflip_deploy": p["bitflip_deploy"],
                                                       "abd": {k: p["abd"].get(k) for k in ("teacher", "kd_abd")}}
        print(f"  {'backdoored' if attacked else 'clean'} federation + plugins: {time.perf_counter() - t0:.0f}s",
              flush=True)
    figures["bitflip"] = rows
    marks = [k for k in (5, 10, 20, 40, 80) if k <= args.flip_budget]
    lines = ["| federation | model | acc | acc int8 | " + " | ".join(f"after {k} flips" for k in marks)
             + " | flips until attacker batch at chance | flips until held-out acc at chance |",
             "|---|---|---|---|" + "---|" * len(marks) + "---|---|"]
    for fed, r in rows.items():
        for name, b in r["bitflip_deploy"].items():
            if "error" in b:
                lines.append(f"| {fed} | {name} | {b['error']} |" + " |" * (len(marks) + 3))
                continue
            curve = b["eval_metric"]
            at_batch = next((k for k, v in enumerate(b["attack_metric"]) if v <= 0.11), None)
            held = b["flips_to_goal_on_eval"]
            lines.append(f"| {fed} | {name} | {pct(b['acc'])} | {pct(b['acc_quantized'])} | "
                         + " | ".join(pct(curve[k]) if k < len(curve) else "-" for k in marks)
                         + f" | {at_batch if at_batch is not None else '>' + str(b['budget'])} | "
                         f"{held if held is not None else '>' + str(b['budget'])} |")
    print("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------
# sanitize: federations whose victims' collected data were poisoned, with and without sanitizing

SANITIZERS = {"AC pca": {"detector": "activation_clustering", "detector_params": {"reduce": "pca"}},
              "SS eps=0.3": {"detector": "spectral_signatures", "detector_params": {"eps": 0.3}}}


def section_sanitize(args, out: Path, figures: dict) -> None:
    poison = {"behaviour": "badnets",
              "params": {"target": TARGET, "poison_fraction": args.victim_poison, "per": "dataset",
                         "trigger": TRIGGER.to_spec()}}
    rows = []
    for seed in range(args.seeds):
        variants = {"no defense": poison}
        variants.update({f"sanitizing, {k}": {"behaviour": "sanitizing", "params": {
            **v, "warmup_epochs": args.warmup, "poisoned_by": poison}} for k, v in SANITIZERS.items()})
        for label, attack in variants.items():
            t0 = time.perf_counter()
            s = Scenario.from_dict({
                "name": f"audit-sanitize-{seed}",
                "data": {"dataset": args.dataset, "num_clients": 4, "partitioner": "iid"},
                "model": {"name": "cnn", "params": dict(args.model_params)},
                "client": {"epochs": args.local_epochs, "batch_size": 32, "lr": 0.05},
                "server": {"rounds": args.rounds, "aggregator": "mean"},
                "attack": [{**attack, "partitions": [0, 1]}],
                "run": {"seed": seed, "engine": "inline", "output": str(out),
                        "imports": ["fedsec.audit.sanitizing"]},
            })
            res = fedsec.run(s)
            last = res.history[-1]
            row = {"seed": seed, "variant": label, "acc": last["clean_acc"], "asr": last["asr"]["badnets"]}
            rows.append(row)
            print(f"  seed {seed} {label}: acc {pct(row['acc'])} ASR {pct(row['asr'])} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    figures["sanitize"] = rows
    lines = ["| victims (2 of 4 clients) | final acc | final ASR |", "|---|---|---|"]
    for label in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == label]
        lines.append(f"| {label} | {pct(_mean([r['acc'] for r in rs]))} | {pct(_mean([r['asr'] for r in rs]))} "
                     f"(per seed: {', '.join(pct(r['asr']) for r in rs)}) |")
    print("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sections", default="nc,prune,data,frequency,sanitize,bitflip")
    ap.add_argument("--rounds", type=int, default=10, help="federation rounds")
    ap.add_argument("--num-clients", type=int, default=10)
    ap.add_argument("--attackers", type=int, default=4, help="BadNets clients (partitions 0..k-1)")
    ap.add_argument("--partitioner", default="dirichlet", choices=["dirichlet", "iid"])
    ap.add_argument("--model-params", default="{}",
                    help="the `cnn`'s model.params as a TOML inline table, e.g. '{width = 32}' (last conv: 2 x width "
                         "channels); federations and the model cache use it")
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--nc-passes", type=int, default=1000, help="nc: most steps per class (early stop ends sooner)")
    ap.add_argument("--nc-step-samples", type=int, default=0,
                    help="nc: clean samples per step (0 = one pass over the server's clean set; reference 1000)")
    ap.add_argument("--nc-restarts", type=int, default=1)
    ap.add_argument("--server-fraction", type=float, default=0.5,
                    help="nc/prune: part of the test split the server holds as its clean set (rest: evaluation)")
    ap.add_argument("--model-cache", default=None,
                    help="nc/prune: directory where the federations' global models are saved and reused")
    ap.add_argument("--fp-epochs", type=int, default=10)
    ap.add_argument("--client-size", type=int, default=720)
    ap.add_argument("--poison-levels", default="0.1,0.3",
                    help="data: poisons' share of the target label after poisoning, comma-separated")
    ap.add_argument("--data-first-seed", type=int, default=4,
                    help="data: first seed (seeds 0-3 chose the verdict thresholds, so the table reports others)")
    ap.add_argument("--dirichlet-clients", type=int, default=2, help="data: clients of the Dirichlet split")
    ap.add_argument("--dirichlet-alpha", type=float, default=0.5, help="data: Dirichlet label-skew alpha")
    ap.add_argument("--data-detectors", default="all",
                    help="data: 'all' or comma-separated detector names (activation_clustering, ...)")
    ap.add_argument("--local-train-epochs", type=int, default=20)
    ap.add_argument("--freq-clean", type=int, default=600, help="clean images the frequency detector trains on")
    ap.add_argument("--freq-val-fraction", type=float, default=None,
                    help="data section: the frequency detector's held-out share of its clean images (default: its own)")
    ap.add_argument("--no-retrain", dest="retrain", action="store_false")
    ap.add_argument("--victim-poison", type=float, default=0.03,
                    help="sanitize: fraction of each victim's data poisoned (per dataset)")
    ap.add_argument("--warmup", type=int, default=10, help="sanitize: local epochs of the auditing model")
    ap.add_argument("--abd-steps", type=int, default=200)
    ap.add_argument("--flip-budget", type=int, default=40)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    args.sections = set(args.sections.split(","))
    try:
        args.model_params = tomllib.loads(f"p = {args.model_params}")["p"]
    except tomllib.TOMLDecodeError as e:
        ap.error(f"--model-params: expected a TOML inline table such as '{{width = 32}}', got "
                 f"{args.model_params!r} ({e})")
    if not isinstance(args.model_params, dict):
        ap.error(f"--model-params: expected a TOML inline table such as '{{width = 32}}', got {args.model_params!r}")
    torch.set_num_threads(1)
    figures: dict[str, Any] = {"args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()}}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        if args.sections & {"nc", "prune"}:
            print("## Global models: Neural Cleanse, fine-pruning", flush=True)
            section_models(args, out, figures)
        if "data" in args.sections:
            print("## A client audits its own data", flush=True)
            section_data(args, figures)
        if "frequency" in args.sections:
            print("## Frequency detector on unseen triggers", flush=True)
            section_frequency(args, figures)
        if "sanitize" in args.sections:
            print("## Sanitizing clients in a federation", flush=True)
            section_sanitize(args, out, figures)
        if "bitflip" in args.sections:
            print("## Bit flips on the deployed model", flush=True)
            section_bitflip(args, out, figures)
    print(f"total {time.perf_counter() - t0:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

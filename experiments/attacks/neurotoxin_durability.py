"""Neurotoxin vs BadNets: how long the backdoor lives after the attack stops.

Zhang, Panda, Song, Yang, Mahoney, Gonzalez, Ramchandran, Mittal. "Neurotoxin:
Durable Backdoors in Federated Learning." ICML 2022, arXiv:2206.10341; reference
code github.com/jhcknzzm/Federated-Learning-Backdoor (FL_Backdoor_CV).

The paper's protocol, as far as a 2-core machine allows: a federation is first
trained without attack (the authors attack from round 1800 of a pretrained
CIFAR ResNet-18); the attackers then poison in every round of a window
(their ``attack_num`` = 40-250 rounds; ours: ``--attack-rounds``) and stop; the
durability is how many clean rounds the backdoor survives. BadNets and
Neurotoxin use the same trigger, target, poisoned fraction, attackers, local
epochs and learning rate (the same budget), and the same seed (the same
honest clients, data order and sampling), so each pair differs only by
Neurotoxin's gradient mask. The rule is FedAvg (``--rule mean``) or the norm
clipping the authors run every experiment under (``--rule norm_clip --clip
M``: every update scaled to norm <= M, their ``s_norm``).

Per run it reports the peak ASR in the attack window, the ASR at the end,
``lifespan`` (fedsec's ``asr_lifespan``: rounds after the last attacking round
until ASR < half its window peak; ``>C`` = still above after all C clean
rounds), ``above`` (clean rounds the ASR stays >= the fixed ``--threshold``
before it first falls below it, the paper's kind of lifespan) and ``post`` (mean ASR over the
clean rounds: the area under the decay curve, the figure least sensitive to
one noisy round). A table per seed, then the mean over seeds; ``--plot``
writes the mean ASR curves.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/attacks/neurotoxin_durability.py \
        [--dataset digits --model cnn --model-params '{width = 32, hidden = 256}'] \
        [--clients 10 --attackers 2 --pretrain 20 --attack-rounds 10 --clean-rounds 30] \
        [--rule mean | --rule norm_clip --clip 0.6] [--ks 0.01,0.05,0.2] [--seeds 0,1,2] \
        [--attack-lr 0.01] [--diagnose] [--plot out.png] [--json out.json]

The defaults (digits CNN, 3 seeds, 4 methods) take under 3 minutes on one core;
``--diagnose`` adds where one round's honest and BadNets updates fall relative to
the mask (the share of their squared norm on the masked coordinates).

Results and the commands that made them: experiments/attacks/neurotoxin_durability.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from fedsec import load_scenario, run
from fedsec.metrics import asr_lifespan


def rounds_above(asr_after: list[float], threshold: float) -> int | str:
    """Clean rounds the ASR stays >= ``threshold`` before it first falls below it (0: it is
    below in the first clean round); ``">=C"`` when it never falls in the C clean rounds."""
    for i, a in enumerate(asr_after):
        if a < threshold:
            return i
    return f">={len(asr_after)}"


def as_number(v: int | str | None, clean_rounds: int) -> float:
    """A lifespan as a number for averaging: ">C" counts as C + 1, ">=C" as C (lower bounds)."""
    if isinstance(v, str):
        return float(clean_rounds + (0 if v.startswith(">=") else 1))
    return float("nan") if v is None else float(v)


def base_overrides(a: argparse.Namespace, seed: int, lr: float) -> list[str]:
    out = [f'data.dataset="{a.dataset}"', f"data.num_clients={a.clients}", f"data.alpha={a.alpha}",
           f'model.name="{a.model}"', f"model.params={a.model_params}",
           f"client.epochs={a.epochs}", f"client.lr={lr}", f"client.batch_size={a.batch_size}",
           f"run.seed={seed}", f'run.engine="{a.engine}"', f"run.vectorize={str(a.vectorize).lower()}",
           f'run.output="{a.output}"']
    return out


def rule_overrides(a: argparse.Namespace) -> list[str]:
    if a.rule == "norm_clip":
        return ['server.aggregator="norm_clip"', f"server.aggregator_params={{M = {a.clip}}}"]
    return [f'server.aggregator="{a.rule}"']


def pretrain(a: argparse.Namespace, seed: int) -> tuple[Path, float]:
    """A clean federation of ``--pretrain`` rounds; its final model is every attack run's start."""
    over = base_overrides(a, seed, a.lr) + [f"server.rounds={a.pretrain}", 'server.aggregator="mean"', "attack=[]"]
    r = run(load_scenario(a.base, over))
    return Path(r.run_dir) / "model.safetensors", float(r.history[-1]["clean_acc"])


def attack_run(a: argparse.Namespace, seed: int, init: Path, behaviour: str, k: float | None) -> dict:
    params = f"poison_fraction = {a.p}, target = {a.target}"
    if k is not None:
        params += f", mask_ratio = {k}"
    parts = list(range(a.attackers))
    over = base_overrides(a, seed, a.attack_lr or a.lr) + rule_overrides(a) + [
        f'model.init="{init}"', f"server.rounds={a.attack_rounds + a.clean_rounds}",
        f'attack=[{{behaviour = "{behaviour}", partitions = {parts}, start_round = 1, '
        f"end_round = {a.attack_rounds}, params = {{{params}}}}}]"]
    t0 = time.perf_counter()
    r = run(load_scenario(a.base, over))
    rounds = [h["round"] for h in r.history]
    asr = [next(iter(h["asr"].values())) for h in r.history]
    window = asr[: a.attack_rounds]
    after = asr[a.attack_rounds:]
    span = asr_lifespan(rounds, asr, range(1, a.attack_rounds + 1))
    return {
        "peak": max(window), "final": asr[-1], "clean_acc": float(r.history[-1]["clean_acc"]),
        "lifespan": f">{a.clean_rounds}" if span == "still above" else span,
        "above": rounds_above(after, a.threshold),
        "post": sum(after) / len(after), "asr": asr, "seconds": time.perf_counter() - t0,
    }


def diagnose(a: argparse.Namespace, seed: int, init: Path, ks: list[float]) -> list[str]:
    """Where the first attack round's updates lie relative to Neurotoxin's mask, per k.

    From the pretrained model G: the mean honest update of one round (every honest
    partition, the federation's split), partition 0's BadNets update, and the mask
    from partition 0's clean gradient at G. Per k: the share of each update's squared
    norm on the masked (top-k) coordinates (k itself if the mask were random), and how
    many of the mask's coordinates are among the top-k of the honest mean's magnitudes.
    """
    from fedsec.clients import get_behaviour, local_train
    from fedsec.clients.attacks.neurotoxin import clean_gradient, top_k_mask
    from fedsec.clients.base import ClientTask, TrainConfig
    from fedsec.federation.env import dataset_of, initial_state, new_model, partitions_of

    s = load_scenario(a.base, base_overrides(a, seed, a.attack_lr or a.lr) + [f'model.init="{init}"'])
    G = initial_state(s)
    train, parts = dataset_of(s).train, partitions_of(s)
    names = [k for k, _ in new_model(s).named_parameters()]

    def task(pid: int) -> ClientTask:
        model = new_model(s)
        model.load_state_dict(G)
        c = s.client
        return ClientTask(
            partition_id=pid, server_round=1, num_clients=a.clients, num_sampled=a.clients,
            num_classes=len(train.y.unique()), in_shape=tuple(train.x.shape[1:]),
            coalition=tuple(range(a.attackers)), generator=torch.Generator().manual_seed(1000 * seed + pid),
            device=torch.device("cpu"), global_state=G, model=model,
            data=train.subset(torch.as_tensor(parts[pid])),
            config=TrainConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
                               weight_decay=c.weight_decay))

    def update(pid: int, behaviour) -> torch.Tensor:
        t = task(pid)
        local_train(behaviour, t)
        state = t.model.state_dict()
        return torch.cat([(state[k] - G[k]).reshape(-1) for k in names])

    honest = torch.stack([update(p, get_behaviour("honest")) for p in range(a.attackers, a.clients)]).mean(0)
    bad = update(0, get_behaviour("badnets", poison_fraction=a.p, target=a.target))
    t0 = task(0)
    grad = clean_gradient(t0.model, t0.data, s.client.batch_size, torch.device("cpu"))
    lines = []
    for k in ks:
        mask = top_k_mask(grad, k)
        masked = torch.cat([mask[n].reshape(-1) for n in names]) == 0
        top = torch.zeros_like(masked)
        top[torch.topk(honest.abs(), int(masked.sum())).indices] = True

        def share(v: torch.Tensor) -> float:
            return float((v[masked] ** 2).sum() / (v ** 2).sum())

        lines.append(f"| {seed} | {k:g} | {share(honest):.3f} | {share(bad):.3f} | "
                     f"{float((masked & top).sum() / masked.sum()):.3f} |")
    return lines


def fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="experiments/quickstart.toml")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--model-params", default="{}", help="TOML inline table, e.g. '{width = 32, hidden = 256}'")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--attackers", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--attack-lr", type=float, default=0.0,
                    help="every client's lr from the attack on (0 = --lr): late training's decayed lr")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--pretrain", type=int, default=20, help="clean rounds before the attack")
    ap.add_argument("--attack-rounds", type=int, default=10)
    ap.add_argument("--clean-rounds", type=int, default=30)
    ap.add_argument("--rule", default="mean", help="mean or norm_clip (or any rule without parameters)")
    ap.add_argument("--clip", type=float, default=1.0, help="norm_clip's M (the authors' s_norm)")
    ap.add_argument("--p", type=float, default=0.3, help="poisoned fraction of every attacker batch")
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--ks", default="0.01,0.05,0.2", help="Neurotoxin mask ratios k (comma-separated)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threshold", type=float, default=0.5, help="fixed ASR threshold for 'above'")
    ap.add_argument("--engine", default="inline")
    ap.add_argument("--vectorize", action=argparse.BooleanOptionalAction, default=True,
                    help="train the honest clients of a round together (run.vectorize)")
    ap.add_argument("--output", default="/tmp/runs-neurotoxin")
    ap.add_argument("--plot", default="", help="PNG of the mean ASR curves")
    ap.add_argument("--json", default="", help="write every run's figures and ASR series here")
    ap.add_argument("--diagnose", action="store_true",
                    help="also print where the honest and BadNets updates lie relative to the mask")
    a = ap.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    seeds = [int(s) for s in a.seeds.split(",")]
    methods: list[tuple[str, str, float | None]] = [("badnets", "badnets", None)]
    methods += [(f"neurotoxin k={float(k):g}", "neurotoxin", float(k)) for k in a.ks.split(",")]
    rule = f"norm_clip M={a.clip:g}" if a.rule == "norm_clip" else a.rule
    print(f"{a.dataset}, {a.model} {a.model_params}, {a.clients} clients (Dirichlet {a.alpha}), "
          f"{a.attackers} attacker(s); {a.pretrain} clean rounds, then attack in {a.attack_rounds} rounds, "
          f"then {a.clean_rounds} clean rounds; rule {rule}; p = {a.p}, target {a.target}, "
          f"{a.epochs} local epochs, lr {a.lr} (from the attack on: {a.attack_lr or a.lr})", flush=True)
    results: dict[str, list[dict]] = {m: [] for m, _, _ in methods}
    diagnosis: list[str] = []
    t_all = time.perf_counter()
    for seed in seeds:
        init, acc0 = pretrain(a, seed)
        print(f"\nseed {seed}: pretrained clean accuracy {acc0:.3f}", flush=True)
        if a.diagnose:
            diagnosis += diagnose(a, seed, init, [k for _, _, k in methods if k is not None])
        print(f"| method | peak ASR | final ASR | lifespan (half peak) | rounds >= {a.threshold:g} | "
              "mean ASR after | clean acc |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, behaviour, k in methods:
            res = attack_run(a, seed, init, behaviour, k)
            results[label].append(res)
            print(f"| {label} | {res['peak']:.3f} | {res['final']:.3f} | {res['lifespan']} | {res['above']} | "
                  f"{res['post']:.3f} | {res['clean_acc']:.3f} |", flush=True)
    C = a.clean_rounds
    print(f"\nmean over seeds {seeds} (a lifespan '>C' counts as C + 1 = {C + 1}, '>=C' as C):")
    print(f"| method | peak ASR | final ASR | lifespan (half peak) | rounds >= {a.threshold:g} | "
          "mean ASR after | clean acc | lifespans per seed |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for label, rs in results.items():
        def mean(key):
            return sum(r[key] for r in rs) / len(rs)

        life = sum(as_number(r["lifespan"], C) for r in rs) / len(rs)
        above = sum(as_number(r["above"], C) for r in rs) / len(rs)
        per = ", ".join(str(r["lifespan"]) for r in rs)
        print(f"| {label} | {mean('peak'):.3f} | {mean('final'):.3f} | {life:.1f} | {above:.1f} | "
              f"{mean('post'):.3f} | {mean('clean_acc'):.3f} | {per} |")
    if diagnosis:
        print("\nshare of each update's squared norm on the masked (top-k benign-gradient) coordinates "
              "(a random mask: k), first attack round:")
        print("| seed | k | honest mean update | BadNets update | mask in the honest mean's top-k |")
        print("|---:|---:|---:|---:|---:|")
        print("\n".join(diagnosis))
    print(f"\n{time.perf_counter() - t_all:.0f} s in all", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results}, indent=1))
    if a.plot:
        plot(results, a, rule)


def plot(results: dict[str, list[dict]], a: argparse.Namespace, rule: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, rs in results.items():
        series = torch.tensor([r["asr"] for r in rs], dtype=torch.float64)
        x = list(range(1, series.shape[1] + 1))
        m = series.mean(0)
        ax.plot(x, m.tolist(), label=label)
        if series.shape[0] > 1:
            s = series.std(0)
            ax.fill_between(x, (m - s).tolist(), (m + s).tolist(), alpha=0.15)
    ax.axvline(a.attack_rounds + 0.5, color="grey", ls="--", lw=1)
    ax.text(a.attack_rounds + 0.8, 0.95, "attack stops", color="grey", fontsize=8, va="top")
    ax.set_xlabel(f"round after {a.pretrain} clean pretraining rounds")
    ax.set_ylabel("attack success rate (triggered test images)")
    ax.set_ylim(0, 1)
    ax.set_title(f"Backdoor durability: {a.dataset}, {a.model}, {rule}, "
                 f"mean ± std over {len(next(iter(results.values())))} seeds", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.plot, dpi=120)
    print(f"plot: {a.plot}")


if __name__ == "__main__":
    main()

"""The audit detectors and the deployed-model bit-flip attack as server plugins.

``[[plugins]] name = "neural_cleanse"`` (or ``"fine_pruning"``) with the
detector's parameters plus:

``every``
    0 (default): run once on the final global model (``on_run_end``); k > 0:
    also after every k-th round's aggregation (figures in that round's
    ``metrics.jsonl`` line under ``plugins``). ``fine_pruning`` then *repairs*
    the global model in place of the aggregate (a server-side defense).
``server_fraction``
    the part of the test split the server holds as its clean set (seeded
    split by ``seed``); the detector only sees it, and accuracy / ASR are
    reported on the rest. A server never sees client data, so the data
    detectors (activation clustering, spectral signatures, frequency) are not
    server plugins: they run from ``fedsec audit --data`` (a client or a data
    owner auditing its own data).

At the end of the run each writes ``<name>.md`` (printed by ``fedsec run``);
Neural Cleanse also ``neural_cleanse.png`` (the reversed triggers) and, with
``mitigate = "unlearn"`` (or ``"prune"``) on a flagged model,
``nc_unlearned.safetensors`` (``nc_pruned.safetensors``; with ``every = k`` the
repaired model also replaces the aggregate), and
fine-pruning ``fine_pruned.safetensors`` (the repaired models, loadable like
``model.safetensors``). ``bitflip_deploy`` (see
:mod:`fedsec.audit.bitflip_deploy`) attacks the final model and, with
``compare``, the repaired models those plugins saved.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from fedsec.audit.base import AuditResult, AuditTarget, check, is_int, is_num
from fedsec.audit.bitflip_deploy import DeployAttack
from fedsec.audit.fine_pruning import FinePruning
from fedsec.audit.neural_cleanse import NeuralCleanse
from fedsec.data import TensorData
from fedsec.plugins import Plugin, PluginContext, register_plugin
from fedsec.seeding import generator


def server_split(test: TensorData, fraction: float, seed: int) -> tuple[TensorData, TensorData]:
    """(the server's clean set, the evaluation rest): a seeded split of the test split."""
    perm = torch.randperm(len(test), generator=generator(seed, "audit", "server-split"))
    k = int(round(fraction * len(test)))
    return test.subset(perm[:k]), test.subset(perm[k:])


@dataclass(frozen=True, kw_only=True)
class _When:
    every: int = 0
    """0 = only at the end of the run; k = also after every k-th round."""
    server_fraction: float = 0.5
    seed: int = 0

    def _check_when(self, owner: str) -> None:
        check(is_int(self.every) and self.every >= 0, owner, "every", self.every, "an integer >= 0 (0 = end of run)")
        check(is_num(self.server_fraction) and 0 < self.server_fraction < 1, owner, "server_fraction",
              self.server_fraction, "a number in (0, 1)")
        check(is_int(self.seed) and self.seed >= 0, owner, "seed", self.seed, "an integer >= 0")


class _AuditPlugin(Plugin):
    """Hooks shared by the detector plugins."""

    def _target(self, model: nn.Module, ctx: PluginContext, key: object, files: bool) -> AuditTarget:
        clean, evaluation = server_split(ctx.test, self.server_fraction, self.seed)
        return AuditTarget(model=model, clean=clean, evaluation=evaluation, num_classes=ctx.num_classes,
                           in_shape=tuple(ctx.in_shape), device=ctx.device,
                           generator=generator(self.seed, "audit", self.name, key),
                           eval_triggers=dict(ctx.eval_triggers),
                           out_dir=Path(ctx.run_dir) if files and ctx.run_dir is not None else None,
                           make_model=ctx.make_model)

    def _run(self, target: AuditTarget) -> tuple[nn.Module | None, AuditResult]:
        return None, self.audit(target)

    def on_round_end(self, server_round: int, model: nn.Module, ctx: PluginContext) -> nn.Module | None:
        if not self.every or server_round % self.every:
            return None
        new, res = self._run(self._target(model, ctx, server_round, files=False))
        ctx.round_metrics[self.name] = {"flagged": res.flagged, "score": res.to_dict()["score"],
                                        "target": res.target, **self._round_figures(res)}
        return new

    def _round_figures(self, res: AuditResult) -> dict[str, Any]:
        return {}

    def on_run_end(self, model: nn.Module, ctx: PluginContext) -> dict[str, Any]:
        new, res = self._run(self._target(model, ctx, "end", files=True))
        out = res.to_dict()
        if ctx.run_dir is not None:
            from fedsec.results import atomic_write

            self._save(new, ctx, out)
            atomic_write(Path(ctx.run_dir) / f"{self.name}.md", self._markdown(res))
        return out

    def _save(self, new: nn.Module | None, ctx: PluginContext, out: dict[str, Any]) -> None:
        pass

    def _markdown(self, res: AuditResult) -> str:
        raise NotImplementedError


@register_plugin("neural_cleanse")
@dataclass(frozen=True, kw_only=True)
class NeuralCleansePlugin(NeuralCleanse, _When, _AuditPlugin):
    """Neural Cleanse on the global model (end of run, or every k rounds) with the server's clean set."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_when(self.name)

    def _run(self, target: AuditTarget) -> tuple[nn.Module | None, AuditResult]:
        # with mitigate = "unlearn" / "prune" a flagged global model is replaced by its repaired copy
        return self.repair(target)

    def _round_figures(self, res: AuditResult) -> dict[str, Any]:
        out: dict[str, Any] = {"l1_norms": res.figures["l1_norms"]}
        m = res.figures.get("mitigation")
        if m is not None:
            out.update(repaired=m["applied"], mitigation=m["method"], acc_after=m["after"]["acc"], asr_after=m["after"]["asr"])
        return out

    def _save(self, new: nn.Module | None, ctx: PluginContext, out: dict[str, Any]) -> None:
        if new is None:
            return
        from fedsec.results import write_safetensors

        meta = {"scenario": ctx.scenario.to_toml()} if ctx.scenario is not None else None
        key = "neural_cleanse" if self.mitigate == "unlearn" else "neural_cleanse_pruned"
        write_safetensors(Path(ctx.run_dir) / REPAIRED_FILES[key], new.state_dict(), meta)
        out["model_file"] = REPAIRED_FILES[key]

    def _markdown(self, res: AuditResult) -> str:
        f = res.figures
        verdict = f"**flagged**: target class {res.target}" if res.flagged else "not flagged"
        norms = ", ".join(f"{v:.1f}" for v in f["l1_norms"])
        text = (f"### Neural Cleanse\n\n{verdict}; anomaly index {res.score:.2f} (threshold {f['threshold']}), "
                f"median L1 {f['median']:.2f}, MAD {f['mad']:.2f}\n\nreversed-trigger L1 norms per class: "
                f"{norms}\n\nreversed triggers: {f.get('image', '(no run directory)')}\n")
        m = f.get("mitigation")
        if m is None:
            return text
        if not m["applied"]:
            return text + f"\n{m['method']}: not applied (model not flagged)\n"
        asr = list(m["before"]["asr"])
        if m["method"] == "unlearn":
            how = (f"unlearning the reversed trigger of class(es) {m['classes']}: {m['n_stamped']} of "
                   f"{m['n_clean']} clean images stamped, true labels kept, "
                   f"{f['params']['unlearn_epochs']} epochs")
        else:
            how = (f"pruning the penultimate neurons the reversed trigger of class(es) {m['classes']} excites: "
                   f"{len(m['pruned'])} of {m['neurons']} pruned (stopped: {m['stopped']}; reversed-trigger "
                   f"success {m['reversed_success_curve'][0]:.3f} -> "
                   f"{m['reversed_success_curve'][len(m['pruned'])]:.3f})")
        lines = ["", f"{how}; measured on {f['n_eval']}", "",
                 "| model | clean acc | " + " | ".join(f"ASR {k}" for k in asr) + " |",
                 "|---|---|" + "---|" * len(asr)]
        for label in ("before", "after"):
            lines.append(f"| {label} | {m[label]['acc']:.4f} | "
                         + " | ".join(f"{m[label]['asr'][k]:.4f}" for k in asr) + " |")
        return text + "\n".join(lines) + "\n"


@register_plugin("fine_pruning")
@dataclass(frozen=True, kw_only=True)
class FinePruningPlugin(FinePruning, _When, _AuditPlugin):
    """Fine-pruning of the global model with the server's clean set (a repair; every k rounds or at the end)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_when(self.name)

    def _run(self, target: AuditTarget) -> tuple[nn.Module | None, AuditResult]:
        return self.repair(target)

    def _round_figures(self, res: AuditResult) -> dict[str, Any]:
        f = res.figures
        return {"acc_before": f["before"]["acc"], "acc_after": f["after_fine_tuning"]["acc"],
                "asr_before": f["before"]["asr"], "asr_after": f["after_fine_tuning"]["asr"]}

    def _save(self, new: nn.Module | None, ctx: PluginContext, out: dict[str, Any]) -> None:
        from fedsec.results import write_safetensors

        meta = {"scenario": ctx.scenario.to_toml()} if ctx.scenario is not None else None
        write_safetensors(Path(ctx.run_dir) / REPAIRED_FILES["fine_pruning"], new.state_dict(), meta)
        out["model_file"] = REPAIRED_FILES["fine_pruning"]

    def _markdown(self, res: AuditResult) -> str:
        f = res.figures
        lines = ["### Fine-pruning", "",
                 f"pruned {len(f['pruned'])} of {f['channels']} channels of `{f['layer']}`, fine-tuned "
                 f"{f['params']['epochs']} epochs on {f['n_clean']} clean samples; measured on {f['n_eval']}", "",
                 "| model | clean acc | " + " | ".join(f"ASR {k}" for k in f["before"]["asr"]) + " |",
                 "|---|---|" + "---|" * len(f["before"]["asr"])]
        for label, key in (("before", "before"), ("pruned", "after_pruning"), ("fine-pruned", "after_fine_tuning")):
            m = f[key]
            lines.append(f"| {label} | {m['acc']:.4f} | " + " | ".join(f"{v:.4f}" for v in m["asr"].values()) + " |")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# bit flips on the deployed model

REPAIRED_FILES = {
    "fine_pruning": "fine_pruned.safetensors",
    "neural_cleanse": "nc_unlearned.safetensors",
    "neural_cleanse_pruned": "nc_pruned.safetensors",
    "abd": "student_kd_abd.safetensors",
    "abd_kd": "student_kd.safetensors",
}
"""Models other plugins leave in the run directory, by the name ``compare`` uses."""

SAVED_BY = {
    "fine_pruning": "the 'fine_pruning' plugin",
    "neural_cleanse": "the 'neural_cleanse' plugin with mitigate = \"unlearn\" (it saves a model only when it "
                      "flags the global model)",
    "neural_cleanse_pruned": "the 'neural_cleanse' plugin with mitigate = \"prune\" (it saves a model only when it "
                             "flags the global model)",
    "abd": "the 'abd' plugin",
    "abd_kd": "the 'abd' plugin",
}
"""What writes each of :data:`REPAIRED_FILES`, for the error that names a missing one."""


def load_saved_model(path: Path) -> nn.Module:
    """A model file written by a fedsec run or plugin, rebuilt from its embedded scenario."""
    from fedsec.checkpoint import load_model

    return load_model(path, what="saved model")[1]


@register_plugin("bitflip_deploy")
@dataclass(frozen=True, kw_only=True)
class BitFlipDeploy(DeployAttack, Plugin):
    """Post-deployment progressive bit search on the final global model (and on repaired models)."""

    name: ClassVar[str] = "bitflip_deploy"
    compare: tuple[str, ...] = ()
    """Also attack these plugins' saved models: 'fine_pruning', 'neural_cleanse' (its unlearned model),
    'neural_cleanse_pruned',
    'abd' (the KD+ABD student), 'abd_kd'."""
    server_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        comp = tuple(self.compare) if isinstance(self.compare, (list, tuple)) else None
        check(comp is not None and all(c in REPAIRED_FILES for c in comp), self.name, "compare", self.compare,
              f"a list drawn from {sorted(REPAIRED_FILES)}")
        object.__setattr__(self, "compare", comp)
        check(is_num(self.server_fraction) and 0 < self.server_fraction < 1, self.name, "server_fraction",
              self.server_fraction, "a number in (0, 1)")
        check(is_int(self.seed) and self.seed >= 0, self.name, "seed", self.seed, "an integer >= 0")

    def attack(self) -> DeployAttack:
        return DeployAttack(mode=self.mode, target=self.target, trigger=self.trigger, max_flips=self.max_flips,
                            top_k=self.top_k, attack_batch=self.attack_batch, stop_accuracy=self.stop_accuracy,
                            stop_asr=self.stop_asr, stop_on=self.stop_on)

    def on_run_end(self, model: nn.Module, ctx: PluginContext) -> dict[str, Any]:
        clean, evaluation = server_split(ctx.test, self.server_fraction, self.seed)
        models: dict[str, nn.Module | str] = {"final": model}
        for name in self.compare:
            path = Path(ctx.run_dir) / REPAIRED_FILES[name] if ctx.run_dir is not None else None
            if path is None or not path.is_file():
                models[name] = (f"{REPAIRED_FILES[name]} not found in the run directory: list bitflip_deploy "
                                f"after {SAVED_BY[name]} in [[plugins]]")
            else:
                models[name] = load_saved_model(path).to(ctx.device)
        cfg = self.attack()
        out: dict[str, Any] = {}
        for name, m in models.items():
            out[name] = {"error": m} if isinstance(m, str) else cfg.run(
                copy.deepcopy(m), clean, evaluation, ctx.num_classes, generator(self.seed, "bitflip_deploy", name))
        if ctx.run_dir is not None:
            from fedsec.results import atomic_write

            atomic_write(Path(ctx.run_dir) / "bitflip_deploy.md", bitflip_markdown(out, cfg))
        return out


def bitflip_markdown(res: dict[str, Any], cfg: DeployAttack) -> str:
    goal = "accuracy <= chance" if cfg.mode == "untargeted" else f"ASR >= {cfg.stop_asr} to class {cfg.target}"
    lines = [f"### Post-deployment bit flips ({cfg.mode}: {goal}; budget {cfg.max_flips} flips)", "",
             "| model | acc | acc int8 | bit flips | goal reached (attacker's batch) | flips to goal on held-out data "
             "| acc after |", "|---|---|---|---|---|---|---|"]
    for name, r in res.items():
        if "error" in r:
            lines.append(f"| {name} | - | - | - | {r['error']} | - | - |")
            continue
        held = r["flips_to_goal_on_eval"]
        lines.append(f"| {name} | {r['acc']:.4f} | {r['acc_quantized']:.4f} | {r['flips']} | "
                     f"{'yes' if r['reached'] else 'no'} | {held if held is not None else 'not reached'} | "
                     f"{r['acc_after']:.4f} |")
    return "\n".join(lines) + "\n"


__all__ = ["NeuralCleansePlugin", "FinePruningPlugin", "BitFlipDeploy", "server_split", "load_saved_model",
           "REPAIRED_FILES", "bitflip_markdown"]

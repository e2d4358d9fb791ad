"""The registered ``abd`` server plugin and the files it writes into the run directory."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from fedsec.plugins import Plugin, PluginContext, register_plugin
from fedsec.plugins.abd.config import ABDConfig
from fedsec.plugins.abd.table import compare, markdown_table
from fedsec.results import atomic_write, dumps, write_safetensors

STUDENT_FILES = {"kd": "student_kd.safetensors", "kd_abd": "student_kd_abd.safetensors"}


def save_student(path: str | Path, student: nn.Module, scenario: Any, config: ABDConfig) -> None:
    """Write a distilled student as safetensors, atomically.

    Its metadata holds the teacher's scenario with ``model`` set to the
    student's architecture (so ``fedsec distill`` / ``scenario_from_toml`` can
    rebuild and evaluate it against the same triggers) and the ABD config as
    JSON (a config without a seed is recorded with seed 0, the seed it ran with).
    """
    meta = {"abd": dumps(asdict(config.seeded()))}
    if scenario is not None:  # None: a bare plugin context outside a federation
        if config.student is not None:
            model = replace(scenario.model, name=config.student, params=dict(config.student_params), init="")
            scenario = replace(scenario, model=model)
        meta["scenario"] = scenario.to_toml()
    write_safetensors(Path(path), student.state_dict(), meta)


@register_plugin("abd")
@dataclass(frozen=True, kw_only=True)
class ABD(ABDConfig, Plugin):
    """Server plugin: at the end of the run, distil the global model with ABD.

    ``[[plugins]] name = "abd"``; ``params`` are :class:`ABDConfig` fields; without
    ``seed`` the distillation is seeded by the scenario's ``run.seed``.
    ``on_run_end`` returns ``{"teacher": {acc, asr}, "kd": {...}, "kd_abd":
    {...}, "config": {...}}`` and writes ``abd.md`` and the students
    (``student_kd.safetensors``, ``student_kd_abd.safetensors``: the repaired
    models, loadable like ``model.safetensors``) into the run directory.
    """

    name: ClassVar[str] = "abd"

    def config(self) -> ABDConfig:
        return ABDConfig(**{f.name: getattr(self, f.name) for f in fields(ABDConfig)})

    def on_run_end(self, model: nn.Module, ctx: PluginContext) -> dict[str, Any]:
        run_seed = ctx.scenario.run.seed if ctx.scenario is not None else 0
        cfg = self.config().seeded(run_seed)
        teacher = copy.deepcopy(model)

        def keep(key: str, student: nn.Module) -> None:
            if ctx.run_dir is not None:
                save_student(Path(ctx.run_dir) / STUDENT_FILES[key], student, ctx.scenario, cfg)

        results = compare(
            teacher, in_shape=tuple(ctx.in_shape), num_classes=ctx.num_classes, test=ctx.test,
            eval_triggers=ctx.eval_triggers, make_student=ctx.make_model if cfg.student is None else None,
            device=ctx.device, config=cfg, on_student=keep,
        )
        if ctx.run_dir is not None:
            text = "# ABD data-free distillation of the global model\n\n" + markdown_table(results)
            text += (f"\nkd={cfg.kd} sv={cfg.sv} sv_layers={cfg.sv_layers} sv_head={cfg.sv_head} "
                     f"sv_alpha={cfg.sv_alpha} sr={cfg.sr} steps={cfg.steps}\n")
            atomic_write(Path(ctx.run_dir) / "abd.md", text)
        return results

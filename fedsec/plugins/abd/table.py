"""The experiment of Table 1 (Hong et al., ICML 2023): teacher vs KD vs KD+ABD, and its table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from fedsec.data import TensorData
from fedsec.metrics import EvalTrigger
from fedsec.plugins.abd.config import ABDConfig
from fedsec.plugins.abd.evaluation import evaluate
from fedsec.plugins.abd.kd import distill


def compare(
    teacher: nn.Module,
    *,
    in_shape: tuple[int, int, int],
    num_classes: int,
    test: TensorData | None,
    eval_triggers: Mapping[str, EvalTrigger] | None,
    make_student: Callable[[], nn.Module] | None = None,
    device: str | torch.device = "cpu",
    config: ABDConfig,
    log: Callable[[str], None] | None = None,
    on_student: Callable[[str, nn.Module], None] | None = None,
) -> dict[str, Any]:
    """Teacher figures, then the student of plain KD and/or KD+ABD (per ``config``;
    without a seed, 0).

    ``on_student(key, student)`` receives each distilled student (``key`` is
    ``"kd"`` or ``"kd_abd"``, as in the result) before the next one is trained.
    """
    config = config.seeded()
    out: dict[str, Any] = {"teacher": evaluate(teacher.to(device), test, eval_triggers)}
    runs = []
    if config.compare or not config.defended:
        runs.append(False)
    if config.defended:
        runs.append(True)
    for defended in runs:
        res = distill(teacher, in_shape=in_shape, num_classes=num_classes, test=test, eval_triggers=eval_triggers,
                      make_student=make_student, defended=defended, device=device, config=config, log=log)
        info = {k: v for k, v in res.info.items() if k != "history"}
        key = "kd_abd" if defended else "kd"
        out[key] = {**res.metrics, "info": info}
        if on_student is not None:
            on_student(key, res.student)
    out["config"] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in asdict(config).items()}
    return out


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}"


def markdown_table(results: Mapping[str, Any], triggers: list[str] | None = None) -> str:
    """Table 1 shape: one row per trigger, Acc/ASR (%) of teacher, KD and KD+ABD students,
    then one target-class accuracy row per all-to-one trigger."""
    t = results["teacher"]
    names = triggers if triggers is not None else sorted(t.get("asr", {}))
    cols = [("Teacher", t)] + [(lab, results[k]) for k, lab in (("kd", "KD"), ("kd_abd", "KD+ABD")) if k in results]
    lines = ["| Trigger | " + " | ".join(f"{c} Acc/ASR" for c, _ in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for n in names or ["(no trigger)"]:  # a clean scenario still reports the accuracies
        cells = [f"{_pct(m.get('acc'))}/{_pct(m.get('asr', {}).get(n))}" for _, m in cols]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    for n in names:  # a student can reach 0% ASR by never predicting the target class
        if n in t.get("target_acc", {}):
            cells = [_pct(m.get("target_acc", {}).get(n)) for _, m in cols]
            lines.append(f"| {n}: target-class acc | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

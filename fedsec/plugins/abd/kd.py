"""Data-free KD of a (possibly poisoned) teacher, plain or with ABD: one training loop.

The baselines (``kd``): ``"generator"`` (ZSKT, :mod:`.generator`) and ``"ood"``
(one-image transfer set, :mod:`.ood`). Both are a *transfer source* that yields a
batch ``x`` and the teacher's logits on it each step, followed by the student's
steps on that batch; ABD switches on the Shuffling Vaccine (:mod:`.vaccine`:
the source's generator penalty and/or the student loss weights) and, from step
``sr_start * steps``, Self-Retrospection (:mod:`.retrospection`). Plain KD is
the same loop with both off. Every draw comes from generators derived from
``cfg.seed`` (purposes ``"draws"``, ``"shuffle"``; student and generator
initialisation under :func:`fedsec.seeding.scoped_seed`).

The student objective deviates from the reference in one way: it is a
per-sample weighted batch mean rather than two separately averaged groups.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import nn

from fedsec.data import TensorData
from fedsec.metrics import EvalTrigger
from fedsec.plugins.abd.config import ABDConfig
from fedsec.plugins.abd.divergence import kl_per_sample
from fedsec.plugins.abd.evaluation import evaluate
from fedsec.plugins.abd.generator import GeneratorSource
from fedsec.plugins.abd.ood import TransferSetSource
from fedsec.plugins.abd.retrospection import sr_student_step
from fedsec.plugins.abd.vaccine import Vaccine, suspicious, sv_weights
from fedsec.seeding import generator as make_generator
from fedsec.seeding import scoped_seed


class TransferSource(Protocol):
    """Where the student's batches come from (:class:`GeneratorSource`, :class:`TransferSetSource`)."""

    student_iters: int
    """Student steps per batch."""
    clip: float | None
    """Max L2 norm of the student's gradient in a KD step (None: unclipped)."""

    def prepare(self, vaccine: Vaccine | None) -> None: ...

    def batch(
        self, teacher: nn.Module, student: nn.Module, vaccine: Vaccine | None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def end_step(self) -> None: ...


@dataclass
class DistillOutcome:
    student: nn.Module
    metrics: dict[str, Any]
    info: dict[str, Any]


def student_loss(
    s_logits: torch.Tensor,
    t_logits: torch.Tensor,
    x: torch.Tensor,
    vaccine: Vaccine | None,
    cfg: ABDConfig,
    temperature: float,
) -> tuple[torch.Tensor, float]:
    """The student's loss on batch ``x`` (logits (B, C)): the mean of
    ``KL_T(T(x) || S(x))``, weighted per input by ``w = 1 - phi + phi * kappa``
    when an active vaccine weights the student (``cfg.sv_weights_student``).
    Returns the loss and the fraction of suspicious inputs (0 without a vaccine)."""
    kl = kl_per_sample(t_logits, s_logits, temperature)
    if vaccine is None or vaccine.model is None:
        return kl.mean(), 0.0
    with torch.no_grad():
        phi = suspicious(t_logits, vaccine.model(x))
    if not cfg.sv_weights_student:
        return kl.mean(), float(phi.mean())
    w = sv_weights(phi, cfg.sv_alpha, cfg.sv_weighting)
    return (w * kl).mean(), float(phi.mean())


def _fresh_like(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model)
    for mod in m.modules():
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    return m


def _new_student(
    cfg: ABDConfig, in_shape: tuple[int, int, int], num_classes: int,
    make_student: Callable[[], nn.Module] | None, teacher: nn.Module,
) -> nn.Module:
    with scoped_seed(cfg.seed, "abd", "student"):
        if cfg.student is not None:
            from fedsec.models import build_model

            return build_model(cfg.student, in_shape=in_shape, num_classes=num_classes, **dict(cfg.student_params))
        if make_student is not None:
            return make_student()
        return _fresh_like(teacher)


def _adam(student: nn.Module, lr: float, steps: int) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))


def distill(
    teacher: nn.Module,
    *,
    in_shape: tuple[int, int, int],
    num_classes: int,
    test: TensorData | None = None,
    eval_triggers: Mapping[str, EvalTrigger] | None = None,
    make_student: Callable[[], nn.Module] | None = None,
    defended: bool = True,
    device: str | torch.device = "cpu",
    config: ABDConfig | None = None,
    log: Callable[[str], None] | None = None,
    **params: Any,
) -> DistillOutcome:
    """Distil ``teacher`` into a fresh student, data-free, with or without ABD.

    ``params`` are :class:`ABDConfig` fields (or pass ``config``; a config without
    a seed uses 0). The student is ``config.student`` built from the model zoo,
    else ``make_student()``, else a re-initialised copy of the teacher's
    architecture. ``defended=False`` runs the plain KD baseline (SV and SR off
    whatever the config says). The caller's teacher is not modified. Returns the
    student, its metrics on ``test`` (acc, ASR per trigger) and run info.
    """
    cfg = (replace(config, **params) if config is not None else ABDConfig(**params)).seeded()
    device = torch.device(device)
    use_sv = defended and cfg.sv
    use_sr = defended and cfg.sr
    tag = "abd" if defended else "kd"
    teacher = copy.deepcopy(teacher).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = _new_student(cfg, in_shape, num_classes, make_student, teacher).to(device).train()
    for p in student.parameters():
        p.requires_grad_(True)

    gen = make_generator(cfg.seed, "abd", "draws")
    vac = Vaccine(teacher, cfg, make_generator(cfg.seed, "abd", "shuffle")) if use_sv else None
    temperature = cfg.kd_temperature
    steps = cfg.steps
    sr_from = int(math.floor(cfg.sr_start * steps)) if use_sr else steps + 1
    opt, sched = _adam(student, cfg.student_lr, steps)
    info: dict[str, Any] = {"mode": tag, "kd": cfg.kd, "sv": use_sv, "sr": use_sr, "sr_from_step": sr_from}
    history: list[dict[str, Any]] = []
    phi_sum, phi_n, sr_outer = 0.0, 0, []
    t0 = time.perf_counter()

    def kd_loss(x: torch.Tensor, t_logits: torch.Tensor) -> torch.Tensor:
        return student_loss(student(x), t_logits, x, vac, cfg, temperature)[0]

    source: TransferSource = (
        TransferSetSource(cfg, in_shape, device, gen) if cfg.kd == "ood"
        else GeneratorSource(cfg, in_shape, device, gen, temperature)
    )
    source.prepare(vac)
    for step in range(steps):
        if step == sr_from:  # SR resumes training with its own optimiser and schedule (reference)
            opt, sched = _adam(student, cfg.sr_lr, steps - step)
        x, t_logits = source.batch(teacher, student, vac)
        for _ in range(source.student_iters):
            if step >= sr_from:
                sr_outer.append(sr_student_step(student, opt, x, functools.partial(kd_loss, x, t_logits), cfg, gen))
                continue
            loss, ph = student_loss(student(x), t_logits, x, vac, cfg, temperature)
            phi_sum, phi_n = phi_sum + ph, phi_n + 1
            opt.zero_grad()
            loss.backward()
            if source.clip is not None:
                nn.utils.clip_grad_norm_(student.parameters(), source.clip)
            opt.step()
        sched.step()
        source.end_step()
        if cfg.eval_every and test is not None and (step + 1) % cfg.eval_every == 0:
            m = evaluate(student, test, eval_triggers)
            student.train()
            history.append({"step": step + 1, **m})
            if log:
                log(f"[{tag}] step {step + 1}/{steps} acc {m['acc']:.3f} asr {m['asr']}")

    student.eval()
    if vac is not None:
        info.update(vac.info())
    info["suspicious_fraction"] = phi_sum / phi_n if phi_n else float("nan")
    if sr_outer:
        info["sr_outer_kl_mean"] = sum(sr_outer) / len(sr_outer)
    info["seconds"] = time.perf_counter() - t0
    info["history"] = history
    return DistillOutcome(student, evaluate(student, test, eval_triggers), info)

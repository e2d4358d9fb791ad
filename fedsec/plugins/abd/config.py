"""ABD's options: one frozen, validated dataclass shared by :func:`distill` and the plugin.

Defaults are the paper's / reference's (``zskt/main.py``, ``zskt/solver.py``,
``zskt/utils/syn_vaccine.py``, ``cmi/vanilla_kd_ood.py``,
``zskt/sweeps/cifar10_wrn_poi_defense.yml``):

==================  ==========  ===============================================
parameter           default     source
==================  ==========  ===============================================
steps               80000       ``total_n_pseudo_batches`` = 8e4 (ZSKT)
batch_size          128         ``batch_size`` (ZSKT)
n_student_iter      10          ``n_student_iter`` (ZSKT); 1 generator step
z_dim               100         ``z_dim`` (ZSKT)
gen_width           128         ZSKT generator channels
lr_student          2e-3        ``student_learning_rate`` (ZSKT, Adam, cosine)
lr_generator        1e-3        ``generator_learning_rate`` (ZSKT, Adam, cosine)
temperature         1 / 8       ``KL_temperature`` (ZSKT) / ``temp`` (OOD KD)
lr_student (ood)    1e-3        ``lr`` (OOD KD, Adam)
ood_n               50000       one-image transfer set (CIFAR-10 sized)
cutmix_beta         0.25        ``beta``, ``cutmix_prob`` = 1 (OOD KD)
sv_alpha            0.1         ``shuf_teacher`` / ``shufl_coef`` sweeps
sv_ensemble         3           ``n_shuf_ens``
sv_layers           5           ``n_shuf_layer`` (last conv layers)
sv_head             False       not in the reference (conv weights only); vaccine.py
sv_trials           8           Algorithm 2 ("at most 8 trials")
sv_tail             0.02        ``tail_ratio > 0.02`` in ``select_shuffle``
sv_probe_steps      50          ``pseudo_test_batches`` (CMI)
sv_student          None        OOD KD: on; ZSKT: off (generator-side SV only)
sr_start            0.99        SR resumed at pb79199..79599 of 8e4
sr_lr               5e-4        ``sup_resume_lr``
sr_n_delta          10          ``inner_round`` (defense sweep: 10, 20)
sr_delta_lr         0.1         ``pert_lr`` (Adam)
sr_l2               1e-3        ``0.001 * ||delta||^2``
sr_eps              10.0        ``min(1, 10 / ||delta||)`` (commented bound)
sr_fp_iters         5           ``hg.fixed_point(..., 5, ...)``
sr_fp_lr            0.1         ``hg.GradientDescent(loss_inner, 0.1)``
sr_portion          0.02        ``hg_out_portion``
seed                None        the scenario's ``run.seed`` (0 outside a run)
==================  ==========  ===============================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

KD_METHODS = ("ood", "generator")
SR_MODES = ("implicit", "first_order")
SV_WEIGHTINGS = ("reference", "paper")


def _bad(name: str, value: Any, want: str) -> ValueError:
    from fedsec.validation import invalid

    return invalid(f"abd.{name}", value, want)


@dataclass(frozen=True, kw_only=True)
class ABDConfig:
    """Options of :func:`fedsec.plugins.abd.distill` and the ``abd`` plugin (table above).

    ``seed`` seeds every draw of the distillation (student and generator init,
    batches, shuffles, SR masks); ``None`` takes the run's seed (:meth:`seeded`).
    """

    kd: str = "generator"
    sv: bool = True
    sr: bool = True
    compare: bool = True
    seed: int | None = None
    student: str | None = None
    student_params: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 80000
    batch_size: int = 128
    temperature: float | None = None
    lr_student: float | None = None
    # generator (ZSKT)
    n_student_iter: int = 10
    z_dim: int = 100
    gen_width: int = 128
    lr_generator: float = 1e-3
    grad_clip: float = 5.0
    # OOD KD
    ood_source: str = "astronaut"
    ood_n: int = 50000
    cutmix_beta: float = 0.25
    # Shuffling Vaccine
    sv_alpha: float = 0.1
    sv_weighting: str = "reference"
    sv_ensemble: int = 3
    sv_layers: int = 5
    sv_head: bool = False
    sv_trials: int = 8
    sv_tail: float = 0.02
    sv_probe_steps: int = 50
    sv_select: bool = True
    sv_student: bool | None = None
    # Self-Retrospection
    sr_start: float = 0.99
    sr_lr: float = 5e-4
    sr_n_delta: int = 10
    sr_delta_lr: float = 0.1
    sr_l2: float = 1e-3
    sr_eps: float = 10.0
    sr_fp_iters: int = 5
    sr_fp_lr: float = 0.1
    sr_portion: float = 0.02
    sr_coef: float = 1.0
    sr_mode: str = "implicit"
    # evaluation
    eval_every: int = 0

    def __post_init__(self) -> None:
        if self.kd not in KD_METHODS:
            raise _bad("kd", self.kd, f"one of {KD_METHODS}")
        for name in ("sv", "sr", "compare", "sv_select", "sv_head"):
            if not isinstance(getattr(self, name), bool):
                raise _bad(name, getattr(self, name), "a bool")
        if self.sv_student is not None and not isinstance(self.sv_student, bool):
            raise _bad("sv_student", self.sv_student, "a bool or None (the reference's choice per kd)")
        ints_pos = ("steps", "batch_size", "n_student_iter", "z_dim", "gen_width", "ood_n", "sv_ensemble", "sv_layers",
                    "sv_trials", "sr_n_delta", "sr_fp_iters")
        for name in ints_pos:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise _bad(name, v, "a positive integer")
        for name in ("sv_probe_steps", "eval_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise _bad(name, v, "a non-negative integer")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            raise _bad("seed", self.seed, "a non-negative integer or None (the run's seed)")
        pos = ("lr_generator", "grad_clip", "sv_alpha", "sr_lr", "sr_delta_lr", "sr_eps", "sr_fp_lr",
               "cutmix_beta")
        for name in pos:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (v > 0 and math.isfinite(v)):
                raise _bad(name, v, "a positive finite number")
        for name in ("temperature", "lr_student"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0):
                raise _bad(name, v, "a positive number or None")
        for name in ("sr_l2", "sr_coef"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise _bad(name, v, "a non-negative number")
        if not (0.0 < self.sv_tail < 1.0):
            raise _bad("sv_tail", self.sv_tail, "in (0, 1)")
        if not (0.0 <= self.sr_start <= 1.0):
            raise _bad("sr_start", self.sr_start, "a fraction of steps in [0, 1]")
        if not (0.0 < self.sr_portion <= 1.0):
            raise _bad("sr_portion", self.sr_portion, "in (0, 1]")
        if self.sr_mode not in SR_MODES:
            raise _bad("sr_mode", self.sr_mode, f"one of {SR_MODES}")
        if self.sv_weighting not in SV_WEIGHTINGS:
            raise _bad("sv_weighting", self.sv_weighting, f"one of {SV_WEIGHTINGS}")
        if self.student is not None and (not isinstance(self.student, str) or not self.student):
            raise _bad("student", self.student, "a model name or None")
        if not isinstance(self.student_params, Mapping):
            raise _bad("student_params", self.student_params, "a table of model parameters")
        if self.student is not None:
            from fedsec.models import MODELS

            if self.student not in MODELS:
                raise _bad("student", self.student, f"one of {MODELS.names()}")

    def seeded(self, run_seed: int = 0) -> ABDConfig:
        """This config with ``seed`` set: its own if given, else ``run_seed``
        (the scenario's ``run.seed``; 0 for a model distilled outside a run)."""
        return self if self.seed is not None else replace(self, seed=int(run_seed))

    @property
    def kd_temperature(self) -> float:
        if self.temperature is not None:
            return float(self.temperature)
        return 8.0 if self.kd == "ood" else 1.0

    @property
    def student_lr(self) -> float:
        if self.lr_student is not None:
            return float(self.lr_student)
        return 1e-3 if self.kd == "ood" else 2e-3

    @property
    def sv_weights_student(self) -> bool:
        """Whether SV re-weights the student loss. The reference applies the
        weighting only in OOD KD (``vanilla_kd_ood.py``); its ZSKT solver uses SV
        on the generator alone (``BackdoorSuspectLoss.loss``)."""
        return self.sv_student if self.sv_student is not None else self.kd == "ood"

    @property
    def defended(self) -> bool:
        return self.sv or self.sr

"""ABD: Anti-Backdoor Data-free knowledge distillation of the global model.

Hong, Zeng, Yu, Lyu, Jia, Zhou, "Revisiting Data-Free Knowledge Distillation
with Poisoned Teachers", ICML 2023 (arXiv 2306.02368; reference code
github.com/illidanlab/ABD). At the end of a run the server distils the global
model (the possibly poisoned *teacher*) into a fresh *student* without any
training data, and ABD keeps the teacher's backdoor from travelling along.

Data-free KD baselines (``kd``):

- ``"ood"``: the transfer set is augmented patches of one out-of-distribution
  image (:func:`fedsec.data.surrogate.surrogate_patches`), distilled with
  temperature-softened KL and CutMix, as in the reference's ``vanilla_kd_ood``.
- ``"generator"``: ZSKT (Micaelli & Storkey, NeurIPS 2019): a generator
  ``G(z)`` maximises the teacher-student disagreement ``KL(T(x) || S(x))`` while
  the student minimises it; one generator step, then ``n_student_iter``
  student steps on that batch.

ABD adds two defences (Algorithm 2 of the paper):

- Shuffling Vaccine (SV, Sec. 4.1): a *shuffled teacher* ``T~`` permutes the
  input channels of the last ``sv_layers`` conv layers of the teacher (an
  ensemble of ``sv_ensemble`` such copies). Backdoor features use few channels
  and survive the shuffle, clean ones do not, so a synthetic input on which
  ``T~`` agrees with ``T`` is suspicious. Per input, the suspicion score is
  ``S(x) = KL(T(x) || T~(x))`` and ``phi(x) = 1[argmax T(x) == argmax T~(x)]``.
  The generator maximises ``KL(T||S) + alpha * R(x)`` with
  ``R = phi * KL(T || T~)`` (suppress malicious synthesis) and the student
  minimises ``mean_x w(x) KL(T(x) || S(x))`` with
  ``w = 1 - phi + phi * kappa`` (suppress suspicious distillation). As in the
  reference, the student weighting is on for OOD KD and off for ZSKT, whose
  solver applies SV to the generator only (``sv_student`` overrides).
  The slides write ``kappa = 1/alpha``; the reference code
  (``vanilla_kd_ood.py``) uses ``kappa = -alpha`` (reverse distillation on the
  suspicious inputs). Both are offered (``sv_weighting = "reference" |
  "paper"``); ``"reference"`` is the default. A shuffled teacher is *effective*
  when more than 2% of the synthetic inputs fall in the low tail
  ``log10 S(x) < mean - 3 std``; up to 8 shuffles are tried, and SV stays off
  when none is effective.
- Self-Retrospection (SR, Sec. 4.2, Algorithm 1): from step ``lambda``
  (``sr_start``, a fraction of ``steps``) on, each student step first finds a
  universal perturbation ``delta`` (``||delta||_2 <= sr_eps``) by
  ``sr_n_delta`` Adam steps of ascent on ``KL(S(x) || S(x + delta))`` with a
  ``sr_l2 * ||delta||^2`` penalty, then descends
  ``KL(S(x) || S(x + delta(theta)))`` on a portion of the batch through the
  implicit hypergradient: ``delta`` is treated as a fixed point of one gradient
  step of the inner problem and the hypergradient is estimated by ``sr_fp_iters``
  fixed-point iterations (Grazzi et al., ICML 2020), as the reference does with
  ``hypergrad.fixed_point``. ``sr_mode="first_order"`` (``delta`` held
  constant) is a cheaper option, never the default.

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
sv_head             False       not in the reference (conv weights only); below
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
==================  ==========  ===============================================

Scale note: on the 8x8 ``digits`` set with the small ``cnn``, ``sv_alpha=0.1``
with reverse distillation collapsed the student (13.6% accuracy in an earlier
trial); the experiment in ``experiments/plugins/abd_8x8.toml`` sets its own
``sv_alpha`` and prints it. On the 32x32 ``digits_scenes`` federation
(``experiments/plugins/abd.toml``) the generator-side ``sv_alpha`` trades ASR against accuracy
monotonically (conv-only shuffle, 0.3 / 0.5 / 1 / 2 at 400 generator rounds: 71 / 55 / 37 /
31 % ASR at 41 / 35 / 23 / 17 % accuracy, plain KD 84 / 50). With ``sv_head`` (below),
0.3 gives 0.9 % ASR at 41 % accuracy on the same teacher; that scenario uses
``sv_head = True, sv_alpha = 0.3``.

``sv_head = True`` also permutes the channel blocks of the linear layer that
reads the last conv layer's flattened maps (:func:`channel_head`). The reference
shuffles the last 5 conv layers of a WRN-16-2, so that clean features are
scrambled while the few backdoor channels still fire (Sec. 4.1); in the 2-conv
``cnn`` only one conv layer mixes learned channels, and shuffling it alone leaves
the shuffled teacher agreeing with the teacher on 49-80% of clean test images
(digits_scenes, both federated teachers). With the head's channels shuffled as
well, clean agreement falls to 5-18% while triggered inputs mostly keep their
label (patch 100%, blend 54-99%; ``experiments/plugins/abd.md``), which is the
separation the vaccine assumes. Its cost: a shuffled teacher falls back on the
backdoor's target class (19-85% of clean images there), so the vaccine also
suppresses clean samples of that class and the student can lose it (0% clean
accuracy on the patch target); the results' ``target_acc`` shows this.

Deviations from the reference: no attention-transfer term (``AT_beta``; fedsec
models expose no activations); the student loss is a per-sample weighted batch
mean rather than two separately averaged groups; KL is summed over classes (the
reference's ``F.kl_div(reduction="mean")`` divides by the number of classes C),
which leaves every ratio of KL terms unchanged but makes ``sr_l2`` C times weaker
relative to the SR inner KL.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedsec.data import TensorData
from fedsec.metrics import EvalTrigger, accuracy, attack_success_rate
from fedsec.plugins import Plugin, PluginContext, register_plugin
from fedsec.seeding import generator as make_generator
from fedsec.seeding import scoped_seed

KD_METHODS = ("ood", "generator")
SR_MODES = ("implicit", "first_order")
SV_WEIGHTINGS = ("reference", "paper")

# ---------------------------------------------------------------------------
# Divergences, shuffled teacher, suspicion score, loss weights
# ---------------------------------------------------------------------------


def kl_per_sample(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KL(softmax(p/T) || softmax(q/T))`` per row, shape (B,)."""
    logp = F.log_softmax(p_logits / temperature, dim=1)
    logq = F.log_softmax(q_logits / temperature, dim=1)
    return (logp.exp() * (logp - logq)).sum(1)


def _shufflable_layers(model: nn.Module) -> list[nn.Module]:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels > 1]
    if convs:
        return convs
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.in_features > 1]


def channel_head(model: nn.Module, example: torch.Tensor) -> tuple[str, int]:
    """The linear layer that reads the last conv layer's flattened feature maps.

    Returns its module name and the channel count ``C`` of the maps it reads: its
    ``in_features`` are ``C`` channel-major blocks (``nn.Flatten`` order), so a
    permutation of the blocks is the same channel shuffle as on a conv input.
    Found by one traced forward pass of ``example[:1]`` (shape (B, C_in, H, W)),
    since module registration order need not be execution order.
    """
    order: list[tuple[str, nn.Module, torch.Size]] = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: order.append((name, mod, out.shape)))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    convs = [i for i, (_, m, _) in enumerate(order) if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("abd: sv_head needs a model with a conv layer followed by a linear head")
    channels = order[convs[-1]][2][1]
    for name, m, _ in order[convs[-1] + 1 :]:
        if isinstance(m, nn.Linear):
            if m.in_features % channels:
                raise ValueError(
                    f"abd: sv_head: linear layer {name!r} has {m.in_features} inputs, not a multiple of the "
                    f"{channels} channels of the last conv layer"
                )
            return name, channels
    raise ValueError("abd: sv_head needs a linear layer after the last conv layer")


def shuffle_channels(
    model: nn.Module, n_layers: int, gen: torch.Generator, *, head: tuple[str, int] | None = None
) -> nn.Module:
    """A copy of ``model`` whose last ``n_layers`` conv layers (input channels
    > 1; linear layers for conv-free models) have their input channels permuted.

    ``head = (name, C)`` (from :func:`channel_head`) also permutes the ``C``
    channel blocks of that linear layer's input, independently of the convs.
    Each chosen layer's weight keeps its values (a permutation along its input
    dimension), so the shuffled copy has the same parameter multiset per layer.
    """
    shuffled = copy.deepcopy(model)
    layers = _shufflable_layers(shuffled)
    if not layers:
        raise ValueError("model has no conv or linear layer with more than one input channel to shuffle")
    with torch.no_grad():
        for layer in layers[-n_layers:]:
            w = layer.weight
            perm = torch.randperm(w.shape[1], generator=gen).to(w.device)
            w.copy_(w[:, perm].clone())
        if head is not None:
            name, channels = head
            w = shuffled.get_submodule(name).weight
            blocks = w.view(w.shape[0], channels, -1)
            perm = torch.randperm(channels, generator=gen).to(w.device)
            w.copy_(blocks[:, perm].reshape(w.shape).clone())
    return shuffled.eval()


class ShuffledTeacher(nn.Module):
    """Mean logits of ``n`` independently shuffled copies of the teacher."""

    def __init__(
        self, teacher: nn.Module, *, n_layers: int, n: int, gen: torch.Generator, head: tuple[str, int] | None = None
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(shuffle_channels(teacher, n_layers, gen, head=head) for _ in range(n))
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


def suspicion_score(teacher: nn.Module, shuffled: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``S(x) = KL(T(x) || T~(x))`` per input, shape (B,): small where the
    shuffled teacher still agrees (backdoor-like), zero if they are identical."""
    with torch.no_grad():
        return kl_per_sample(teacher(x), shuffled(x)).clamp_min(0.0)


def suspicious(t_logits: torch.Tensor, shuffled_logits: torch.Tensor) -> torch.Tensor:
    """``phi(x)``: 1.0 where the shuffled teacher predicts the teacher's class."""
    return (t_logits.argmax(1) == shuffled_logits.argmax(1)).float()


def sv_kappa(alpha: float, weighting: str = "reference") -> float:
    """Weight of a suspicious input in the student loss: ``-alpha`` (reference
    code, reverse distillation) or ``1/alpha`` (the paper's formula)."""
    if weighting == "reference":
        return -alpha
    if weighting == "paper":
        return 1.0 / alpha
    raise ValueError(f"sv_weighting must be one of {SV_WEIGHTINGS}, got {weighting!r}")


def sv_weights(phi: torch.Tensor, alpha: float, weighting: str = "reference") -> torch.Tensor:
    """Per-input distillation weight ``w = 1 - phi + phi * kappa``."""
    return 1.0 - phi + phi * sv_kappa(alpha, weighting)


def tail_ratio(scores: torch.Tensor) -> float:
    """Fraction of inputs with ``log10 S(x) < mean - 3 std`` (the "danger zone")."""
    s = torch.log10(scores.double().clamp_min(1e-12))
    if len(s) < 2:
        return 0.0
    return float((s < s.mean() - 3 * s.std()).double().mean())


# ---------------------------------------------------------------------------
# Generator (ZSKT)
# ---------------------------------------------------------------------------


class Generator(nn.Module):
    """ZSKT-style generator: z -> (C, H, W) in [0, 1] (sigmoid of a non-affine BN)."""

    def __init__(self, z_dim: int, in_shape: tuple[int, int, int], width: int = 128) -> None:
        super().__init__()
        c, h, w = in_shape
        self.out_hw = (h, w)
        self.s = max(1, math.ceil(h / 4)), max(1, math.ceil(w / 4))
        self.fc = nn.Linear(z_dim, width * self.s[0] * self.s[1])
        self.width = width
        self.body = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.BatchNorm2d(width // 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width // 2, c, 3, padding=1),
            nn.BatchNorm2d(c, affine=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.body(self.fc(z).view(len(z), self.width, *self.s))
        if tuple(x.shape[-2:]) != self.out_hw:
            x = F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=False)
        return torch.sigmoid(x)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def _bad(name: str, value: Any, want: str) -> ValueError:
    return ValueError(f"abd: {name} must be {want}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ABDConfig:
    """Options of :func:`distill` and the ``abd`` plugin (see the module docstring)."""

    kd: str = "generator"
    sv: bool = True
    sr: bool = True
    compare: bool = True
    seed: int = 0
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
        for name in ("seed", "sv_probe_steps", "eval_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise _bad(name, v, "a non-negative integer")
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


# ---------------------------------------------------------------------------
# Self-Retrospection
# ---------------------------------------------------------------------------


def _project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    n = float(delta.norm())
    return delta * (eps / n) if n > eps else delta


def sr_find_delta(model: nn.Module, x: torch.Tensor, cfg: ABDConfig, gen: torch.Generator) -> torch.Tensor:
    """Universal ``delta`` (shape (1, C, H, W), ``||delta||_2 <= sr_eps``): Adam
    ascent on ``KL(S(x) || S(x + delta))`` minus ``sr_l2 * ||delta||^2``.

    Starts from a small Gaussian (Algorithm 1; sigma = 1e-3): at exactly zero
    the KL has a vanishing gradient."""
    delta = (1e-3 * torch.randn((1, *x.shape[1:]), generator=gen)).to(x.device).requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=cfg.sr_delta_lr)
    with torch.no_grad():
        clean = model(x)
    for _ in range(cfg.sr_n_delta):
        loss = -kl_per_sample(clean, model(x + delta)).mean() + cfg.sr_l2 * delta.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            delta.copy_(_project_l2(delta, cfg.sr_eps))
    for p in model.parameters():  # drop the grads the delta search left on the student
        p.grad = None
    return delta.detach()


def sr_hypergradient(
    student: nn.Module, x: torch.Tensor, delta: torch.Tensor, cfg: ABDConfig, gen: torch.Generator
) -> tuple[list[torch.Tensor], float]:
    """Gradient wrt the student's parameters of the outer SR loss
    ``KL(S(x) || S(x + m * delta(theta)))`` (``m`` marks ``sr_portion`` of the
    batch), with ``d delta / d theta`` from the implicit function theorem on
    the fixed point ``delta = delta - sr_fp_lr * grad_delta L_in`` (``sr_fp_iters``
    fixed-point iterations; ``sr_mode="first_order"`` drops that term)."""
    params = [p for p in student.parameters() if p.requires_grad]
    b = len(x)
    k = max(1, int(round(b * cfg.sr_portion)))
    idx = torch.randperm(b, generator=gen)[:k].to(x.device)
    mask = torch.zeros(b, 1, 1, 1, device=x.device)
    mask[idx] = 1.0
    d = delta.detach().clone().requires_grad_(True)
    with torch.no_grad():
        clean = student(x)
    outer = kl_per_sample(clean, student(x + mask * d)).mean()
    g_d, *g_theta = torch.autograd.grad(outer, [d, *params], allow_unused=True)
    g_theta = [torch.zeros_like(p) if g is None else g for g, p in zip(g_theta, params)]
    if cfg.sr_mode == "first_order":
        return g_theta, float(outer.detach())
    # Fixed-point map Phi(d, theta) = d - eta * dL_in/dd, built once with its graph.
    inner = -kl_per_sample(clean, student(x + d)).mean() + cfg.sr_l2 * d.pow(2).sum()
    (grad_inner,) = torch.autograd.grad(inner, d, create_graph=True)
    mapped = d - cfg.sr_fp_lr * grad_inner
    v = torch.zeros_like(d)
    for _ in range(cfg.sr_fp_iters):
        (jv,) = torch.autograd.grad(mapped, d, grad_outputs=v, retain_graph=True)
        v = jv + g_d
    cross = torch.autograd.grad(mapped, params, grad_outputs=v, allow_unused=True)
    grads = [gt + (torch.zeros_like(gt) if c is None else c) for gt, c in zip(g_theta, cross)]
    return grads, float(outer.detach())


# ---------------------------------------------------------------------------
# Distillation
# ---------------------------------------------------------------------------


@dataclass
class DistillOutcome:
    student: nn.Module
    metrics: dict[str, Any]
    info: dict[str, Any]


def _fresh_like(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model)
    for mod in m.modules():
        if hasattr(mod, "reset_parameters"):
            mod.reset_parameters()
    return m


def evaluate(model: nn.Module, test: TensorData | None, triggers: Mapping[str, EvalTrigger] | None) -> dict:
    """``acc``, ``asr`` per trigger and ``target_acc``: clean accuracy on the test
    images of each all-to-one trigger's target class. A student that never predicts
    the target class has 0% ASR for that reason alone; ``target_acc`` shows it."""
    out: dict[str, Any] = {}
    if test is None:
        return out
    triggers = triggers or {}
    out["acc"] = accuracy(model, test)
    out["asr"] = {name: attack_success_rate(model, test, t) for name, t in triggers.items()}
    out["target_acc"] = {}
    for name, t in triggers.items():
        if t.target is not None and bool((test.y == t.target).any()):
            out["target_acc"][name] = accuracy(model, test.subset(torch.nonzero(test.y == t.target).flatten()))
    return out


def _beta_sample(a: float, gen: torch.Generator) -> float:
    """Beta(a, a) by Johnk's method (torch.distributions takes no generator)."""
    for _ in range(10000):
        u, v = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
        x, y = u ** (1.0 / a), v ** (1.0 / a)
        if 0.0 < x + y <= 1.0:
            return x / (x + y)
    return 0.5


def _cutmix(x: torch.Tensor, beta: float, gen: torch.Generator) -> torch.Tensor:
    """CutMix of the transfer batch with itself (reference OOD KD, prob 1)."""
    lam = _beta_sample(beta, gen)
    b, _, h, w = x.shape
    rh, rw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy = int(torch.randint(h, (1,), generator=gen))
    cx = int(torch.randint(w, (1,), generator=gen))
    y1, y2 = max(cy - rh // 2, 0), min(cy + rh // 2, h)
    x1, x2 = max(cx - rw // 2, 0), min(cx + rw // 2, w)
    if y2 <= y1 or x2 <= x1:
        return x
    perm = torch.randperm(b, generator=gen).to(x.device)
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    return x


class _Vaccine:
    """The selected shuffled teacher, or None when SV is off / found no effective one."""

    def __init__(self, teacher: nn.Module, cfg: ABDConfig, gen: torch.Generator) -> None:
        self.teacher, self.cfg, self.gen = teacher, cfg, gen
        self.model: nn.Module | None = None
        self.trials = 0
        self.tail = float("nan")
        self.tails: list[float] = []
        self.head: tuple[str, int] | None = None

    def select(self, probe: torch.Tensor) -> None:
        cfg = self.cfg
        self.head = channel_head(self.teacher, probe) if cfg.sv_head else None
        for trial in range(cfg.sv_trials):
            cand = ShuffledTeacher(
                self.teacher, n_layers=cfg.sv_layers, n=cfg.sv_ensemble, gen=self.gen, head=self.head
            )
            cand.to(probe.device)
            scores = torch.cat(
                [suspicion_score(self.teacher, cand, probe[i : i + 1024]) for i in range(0, len(probe), 1024)]
            )
            r = tail_ratio(scores)
            self.tails.append(r)
            self.trials = trial + 1
            if not cfg.sv_select or r > cfg.sv_tail:
                self.model, self.tail = cand, r
                return

    def info(self) -> dict[str, Any]:
        return {
            "sv_active": self.model is not None,
            "sv_trials": self.trials,
            "sv_tail_ratios": self.tails,
            "sv_head": self.head[0] if self.head else None,
        }


def _student_step_loss(
    s_logits: torch.Tensor, t_logits: torch.Tensor, x: torch.Tensor, vac: _Vaccine | None, cfg: ABDConfig,
    temperature: float,
) -> tuple[torch.Tensor, float]:
    kl = kl_per_sample(t_logits, s_logits, temperature)
    if vac is None or vac.model is None:
        return kl.mean(), 0.0
    with torch.no_grad():
        phi = suspicious(t_logits, vac.model(x))
    if not cfg.sv_weights_student:
        return kl.mean(), float(phi.mean())
    w = sv_weights(phi, cfg.sv_alpha, cfg.sv_weighting)
    return (w * kl).mean(), float(phi.mean())


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

    ``params`` are :class:`ABDConfig` fields (or pass ``config``). The student is
    ``config.student`` built from the model zoo, else ``make_student()``, else a
    re-initialised copy of the teacher's architecture. ``defended=False`` runs
    the plain KD baseline (SV and SR off whatever the config says). Returns the
    student, its metrics on ``test`` (acc, ASR per trigger) and run info.
    """
    cfg = replace(config, **params) if config is not None else ABDConfig(**params)
    device = torch.device(device)
    use_sv = defended and cfg.sv
    use_sr = defended and cfg.sr
    tag = "abd" if defended else "kd"
    teacher = copy.deepcopy(teacher).to(device).eval()  # the caller's model is left as it was
    for p in teacher.parameters():
        p.requires_grad_(False)

    with scoped_seed(cfg.seed, "abd", "student"):
        if cfg.student is not None:
            from fedsec.models import build_model

            student = build_model(cfg.student, in_shape=in_shape, num_classes=num_classes, **dict(cfg.student_params))
        elif make_student is not None:
            student = make_student()
        else:
            student = _fresh_like(teacher)
    student = student.to(device).train()
    for p in student.parameters():
        p.requires_grad_(True)

    gen = make_generator(cfg.seed, "abd", "draws")
    vac = _Vaccine(teacher, cfg, make_generator(cfg.seed, "abd", "shuffle")) if use_sv else None
    temperature = cfg.kd_temperature
    steps = cfg.steps
    sr_from = int(math.floor(cfg.sr_start * steps)) if use_sr else steps + 1
    opt = torch.optim.Adam(student.parameters(), lr=cfg.student_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    info: dict[str, Any] = {"mode": tag, "kd": cfg.kd, "sv": use_sv, "sr": use_sr, "sr_from_step": sr_from}
    history: list[dict[str, Any]] = []
    phi_sum, phi_n, sr_outer = 0.0, 0, []
    t0 = time.perf_counter()

    def sr_update(x: torch.Tensor, t_logits: torch.Tensor) -> None:
        nonlocal sr_outer
        delta = sr_find_delta(student, x, cfg, gen)
        grads, outer = sr_hypergradient(student, x, delta, cfg, gen)
        sr_outer.append(outer)
        opt.zero_grad()
        loss, _ = _student_step_loss(student(x), t_logits, x, vac, cfg, temperature)
        loss.backward()
        for p, g in zip([p for p in student.parameters() if p.requires_grad], grads):
            p.grad = p.grad + cfg.sr_coef * g if p.grad is not None else cfg.sr_coef * g
        opt.step()

    def enter_sr(step: int) -> None:
        nonlocal opt, sched
        opt = torch.optim.Adam(student.parameters(), lr=cfg.sr_lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps - step))

    def maybe_eval(step: int) -> None:
        if cfg.eval_every and test is not None and (step + 1) % cfg.eval_every == 0:
            m = evaluate(student, test, eval_triggers)
            student.train()
            history.append({"step": step + 1, **m})
            if log:
                log(f"[{tag}] step {step + 1}/{steps} acc {m['acc']:.3f} asr {m['asr']}")

    if cfg.kd == "ood":
        data = surrogate_transfer_set(cfg, in_shape).to(device)
        if vac is not None:
            probe_n = min(len(data), max(cfg.batch_size, cfg.sv_probe_steps * cfg.batch_size))
            vac.select(data[:probe_n])
        for step in range(steps):
            if step == sr_from:
                enter_sr(step)
            idx = torch.randint(len(data), (cfg.batch_size,), generator=gen).to(device)
            x = _cutmix(data[idx], cfg.cutmix_beta, gen)
            with torch.no_grad():
                t_logits = teacher(x)
            if step >= sr_from:
                sr_update(x, t_logits)
            else:
                loss, ph = _student_step_loss(student(x), t_logits, x, vac, cfg, temperature)
                phi_sum, phi_n = phi_sum + ph, phi_n + 1
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
            maybe_eval(step)
    else:
        with scoped_seed(cfg.seed, "abd", "generator"):
            g_net = Generator(cfg.z_dim, in_shape, cfg.gen_width).to(device)
        g_opt = torch.optim.Adam(g_net.parameters(), lr=cfg.lr_generator)
        g_sched = torch.optim.lr_scheduler.CosineAnnealingLR(g_opt, max(1, steps))
        probe: list[torch.Tensor] = []
        for step in range(steps):
            if step == sr_from:
                enter_sr(step)
            z = torch.randn(cfg.batch_size, cfg.z_dim, generator=gen).to(device)
            # Generator: maximise KL(T || S) (+ alpha * R with an active vaccine).
            g_net.train()
            x = g_net(z)
            t_logits = teacher(x)
            s_logits = student(x)
            g_loss = -kl_per_sample(t_logits, s_logits, temperature).mean()
            if vac is not None and vac.model is not None:
                sh = vac.model(x)
                phi = suspicious(t_logits.detach(), sh.detach())
                if phi.sum() > 0:
                    r = (phi * kl_per_sample(t_logits, sh)).sum() / phi.sum()
                    g_loss = g_loss - cfg.sv_alpha * r
            g_opt.zero_grad()
            g_loss.backward()
            nn.utils.clip_grad_norm_(g_net.parameters(), cfg.grad_clip)
            g_opt.step()
            for p in student.parameters():
                p.grad = None
            with torch.no_grad():
                x = g_net(z)
                t_logits = teacher(x)
            if vac is not None and vac.model is None and vac.trials == 0:
                probe.append(x)
                if len(probe) >= max(1, cfg.sv_probe_steps):
                    vac.select(torch.cat(probe))
                    probe = []
            for _ in range(cfg.n_student_iter):
                if step >= sr_from:
                    sr_update(x, t_logits)
                else:
                    loss, ph = _student_step_loss(student(x), t_logits, x, vac, cfg, temperature)
                    phi_sum, phi_n = phi_sum + ph, phi_n + 1
                    opt.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
                    opt.step()
            sched.step()
            g_sched.step()
            maybe_eval(step)

    student.eval()
    if vac is not None:
        info.update(vac.info())
    info["suspicious_fraction"] = phi_sum / phi_n if phi_n else float("nan")
    if sr_outer:
        info["sr_outer_kl_mean"] = sum(sr_outer) / len(sr_outer)
    info["seconds"] = time.perf_counter() - t0
    info["history"] = history
    return DistillOutcome(student, evaluate(student, test, eval_triggers), info)


def surrogate_transfer_set(cfg: ABDConfig, in_shape: tuple[int, int, int]) -> torch.Tensor:
    from fedsec.data.surrogate import surrogate_patches

    return surrogate_patches(cfg.ood_n, in_shape, source=cfg.ood_source, seed=cfg.seed)


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
    """Teacher figures, then the student of plain KD and/or KD+ABD (per ``config``).

    ``on_student(key, student)`` receives each distilled student (``key`` is
    ``"kd"`` or ``"kd_abd"``, as in the result) before the next one is trained.
    """
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


def save_student(path: str | Path, student: nn.Module, scenario: Any, config: ABDConfig) -> None:
    """Write a distilled student as safetensors, atomically.

    Its metadata holds the teacher's scenario with ``model`` set to the
    student's architecture (so ``fedsec distill`` / ``scenario_from_toml`` can
    rebuild and evaluate it against the same triggers) and the ABD config as JSON.
    """
    from fedsec.results import dumps, write_safetensors

    meta = {"abd": dumps(asdict(config))}
    if scenario is not None:  # None: a bare plugin context outside a federation
        if config.student is not None:
            model = replace(scenario.model, name=config.student, params=dict(config.student_params), init="")
            scenario = replace(scenario, model=model)
        meta["scenario"] = scenario.to_toml()
    write_safetensors(Path(path), student.state_dict(), meta)


STUDENT_FILES = {"kd": "student_kd.safetensors", "kd_abd": "student_kd_abd.safetensors"}


def _pct(v: float | None) -> str:
    return "-" if v is None or v != v else f"{100 * v:.1f}"


def markdown_table(results: Mapping[str, Any], triggers: list[str] | None = None) -> str:
    """Table 1 shape: one row per trigger, Acc/ASR of teacher, KD and KD+ABD students."""
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


# ---------------------------------------------------------------------------
# Plugin
# ---------------------------------------------------------------------------


@register_plugin("abd")
@dataclass(frozen=True, kw_only=True)
class ABD(ABDConfig, Plugin):
    """Server plugin: at the end of the run, distil the global model with ABD.

    ``[[plugins]] name = "abd"``; ``params`` are :class:`ABDConfig` fields.
    ``on_run_end`` returns ``{"teacher": {acc, asr}, "kd": {...}, "kd_abd":
    {...}, "config": {...}}`` and writes ``abd.md`` and the students
    (``student_kd.safetensors``, ``student_kd_abd.safetensors``: the repaired
    models, loadable like ``model.safetensors``) into the run directory.
    """

    name: ClassVar[str] = "abd"

    def config(self) -> ABDConfig:
        return ABDConfig(**{f.name: getattr(self, f.name) for f in fields(ABDConfig)})

    def on_run_end(self, model: nn.Module, ctx: PluginContext) -> dict[str, Any]:
        cfg = self.config()
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
            from fedsec.results import atomic_write

            text = "# ABD data-free distillation of the global model\n\n" + markdown_table(results)
            text += (f"\nkd={cfg.kd} sv={cfg.sv} sv_layers={cfg.sv_layers} sv_head={cfg.sv_head} "
                     f"sv_alpha={cfg.sv_alpha} sr={cfg.sr} steps={cfg.steps}\n")
            atomic_write(Path(ctx.run_dir) / "abd.md", text)
        return results


__all__ = [
    "ABD",
    "ABDConfig",
    "DistillOutcome",
    "Generator",
    "ShuffledTeacher",
    "channel_head",
    "compare",
    "save_student",
    "distill",
    "kl_per_sample",
    "markdown_table",
    "shuffle_channels",
    "sr_find_delta",
    "sr_hypergradient",
    "suspicion_score",
    "suspicious",
    "sv_kappa",
    "sv_weights",
    "tail_ratio",
]

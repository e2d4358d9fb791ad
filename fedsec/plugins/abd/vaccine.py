"""Shuffling Vaccine (SV; Hong et al., ICML 2023, Sec. 4.1 and Algorithm 2).

A *shuffled teacher* ``T~`` permutes the input channels of the last
``sv_layers`` conv layers of the teacher (an ensemble of ``sv_ensemble`` such
copies). Backdoor features use few channels and survive the shuffle, clean ones
do not, so a synthetic input on which ``T~`` agrees with ``T`` is suspicious.
Per input, the suspicion score is ``S(x) = KL(T(x) || T~(x))`` and
``phi(x) = 1[argmax T(x) == argmax T~(x)]``. The generator maximises
``KL(T||S) + alpha * R(x)`` with ``R = phi * KL(T || T~)`` (suppress malicious
synthesis; :mod:`.generator`) and the student minimises
``mean_x w(x) KL(T(x) || S(x))`` with ``w = 1 - phi + phi * kappa`` (suppress
suspicious distillation; :mod:`.kd`). The slides write ``kappa = 1/alpha``; the
reference code (``vanilla_kd_ood.py``) uses ``kappa = -alpha`` (reverse
distillation on the suspicious inputs). Both are offered (``sv_weighting =
"reference" | "paper"``); ``"reference"`` is the default. A shuffled teacher is
*effective* when more than ``sv_tail`` (2%) of the synthetic inputs fall in the
low tail ``log10 S(x) < mean - 3 std``; up to ``sv_trials`` (8) shuffles are
tried, and SV stays off when none is effective (:class:`Vaccine`).

``sv_head = True`` also permutes the channel blocks of the linear layer that
reads the last conv layer's flattened maps (:func:`channel_head`). The reference
shuffles the last 5 conv layers of a WRN-16-2, so that clean features are
scrambled while the few backdoor channels still fire; in the 2-conv ``cnn`` only
one conv layer mixes learned channels, and shuffling it alone leaves the
shuffled teacher agreeing with the teacher on 49-80% of clean test images
(digits_scenes, both federated teachers). With the head's channels shuffled as
well, clean agreement falls to 5-18% while triggered inputs mostly keep their
label (patch 100%, blend 54-99%; ``experiments/plugins/abd.md``), which is the
separation the vaccine assumes. Its cost: a shuffled teacher falls back on the
backdoor's target class (19-85% of clean images there), so the vaccine also
suppresses clean samples of that class and the student can lose it (0% clean
accuracy on the patch target); the results' ``target_acc`` shows this.

Scale note: on the 8x8 ``digits`` set with the small ``cnn``, ``sv_alpha=0.1``
with reverse distillation collapsed the student (13.6% accuracy in an earlier
trial); ``experiments/plugins/abd_8x8.toml`` sets its own ``sv_alpha``. On the
32x32 ``digits_scenes`` federation (``experiments/plugins/abd.toml``) the
generator-side ``sv_alpha`` trades ASR against accuracy monotonically (conv-only
shuffle, 0.3 / 0.5 / 1 / 2 at 400 generator rounds: 71 / 55 / 37 / 31 % ASR at
41 / 35 / 23 / 17 % accuracy, plain KD 84 / 50). With ``sv_head``, 0.3 gives
0.9 % ASR at 41 % accuracy on the same teacher; that scenario uses
``sv_head = True, sv_alpha = 0.3``.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from fedsec.plugins.abd.config import SV_WEIGHTINGS, ABDConfig
from fedsec.plugins.abd.divergence import kl_per_sample


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
    """Mean logits of ``n`` independently shuffled copies of the teacher (``T~``)."""

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
    """``phi(x)``, shape (B,): 1.0 where the shuffled teacher predicts the teacher's class."""
    return (t_logits.argmax(1) == shuffled_logits.argmax(1)).float()


def sv_kappa(alpha: float, weighting: str = "reference") -> float:
    """Weight ``kappa`` of a suspicious input in the student loss: ``-alpha``
    (reference code, reverse distillation) or ``1/alpha`` (the paper's formula)."""
    if weighting == "reference":
        return -alpha
    if weighting == "paper":
        return 1.0 / alpha
    raise ValueError(f"sv_weighting must be one of {SV_WEIGHTINGS}, got {weighting!r}")


def sv_weights(phi: torch.Tensor, alpha: float, weighting: str = "reference") -> torch.Tensor:
    """Per-input distillation weight ``w = 1 - phi + phi * kappa``, shape of ``phi``."""
    return 1.0 - phi + phi * sv_kappa(alpha, weighting)


def tail_ratio(scores: torch.Tensor) -> float:
    """Fraction of inputs with ``log10 S(x) < mean - 3 std`` (the "danger zone")."""
    s = torch.log10(scores.double().clamp_min(1e-12))
    if len(s) < 2:
        return 0.0
    return float((s < s.mean() - 3 * s.std()).double().mean())


class Vaccine:
    """The selected shuffled teacher (``model``), or None while SV is off or
    found no effective shuffle.

    :meth:`select` tries up to ``sv_trials`` shuffles on a probe batch (all
    draws from ``gen``); :meth:`observe` collects the first ``sv_probe_steps``
    synthetic batches of a generator run and selects on them once.
    """

    def __init__(self, teacher: nn.Module, cfg: ABDConfig, gen: torch.Generator) -> None:
        self.teacher, self.cfg, self.gen = teacher, cfg, gen
        self.model: nn.Module | None = None
        self.trials = 0
        self.tail = float("nan")
        self.tails: list[float] = []
        self.head: tuple[str, int] | None = None
        self._probe: list[torch.Tensor] = []

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

    def observe(self, x: torch.Tensor) -> None:
        """Add a synthetic batch to the probe; select once enough are seen."""
        if self.model is not None or self.trials:
            return
        self._probe.append(x)
        if len(self._probe) >= max(1, self.cfg.sv_probe_steps):
            probe, self._probe = torch.cat(self._probe), []
            self.select(probe)

    def info(self) -> dict[str, Any]:
        return {
            "sv_active": self.model is not None,
            "sv_trials": self.trials,
            "sv_tail_ratios": self.tails,
            "sv_head": self.head[0] if self.head else None,
        }

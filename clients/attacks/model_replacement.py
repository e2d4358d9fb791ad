"""Model replacement (constrain-and-scale) backdoor.

Bagdasaryan, Veit, Hua, Estrin, Shmatikov. "How To Backdoor Federated
Learning." AISTATS 2020, arXiv:1807.00459.

The attacker trains a backdoored model ``X`` (trigger-poisoned batches, as
BadNets) and submits ``L = gamma (X - G) + G`` so that, once the server
averages with weight ``eta / n``, the global model is (approximately) replaced
by ``X``. ``gamma`` defaults to ``n / eta`` (``task.num_sampled /
task.server_lr``), the paper's value for G' = G + (eta / n) sum_i (L_i - G). Under
this framework's example-weighted FedAvg the attacker's row weighs n_k / N
instead of 1 / n, so the global model moves by (n n_k / N)(X - G): exact
replacement only when the attacker's partition has the average size (the
attacker cannot know N; pass ``gamma`` explicitly to compensate).

Constrain-and-scale: the training objective can add the paper's anomaly term, ``L = alpha L_class + (1 - alpha) L_ano`` with
``L_ano = ||X - G||^2`` (``alpha``; 1 = plain training), and ``norm_bound``
``S`` scales the submitted update down so that ``||L - G|| <= S``
(the attacker's estimate of the server's norm bound; 0 = none). The update is
applied to every floating-point state entry, buffers included, so the replaced
model carries the attacker's normalisation statistics too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from fedsec.clients.attacks._common import (
    check, check_fraction, check_target, coerce_trigger, is_num, rewrite_update, update_norm,
)
from fedsec.clients.attacks.badnets import TriggerBackdoor
from fedsec.clients.base import ClientTask, register_behaviour
from fedsec.data.triggers import Trigger


@register_behaviour("model_replacement")
@dataclass(frozen=True, kw_only=True)
class ModelReplacement(TriggerBackdoor):
    """Train on poisoned batches, then submit G + gamma (X - G) (Bagdasaryan et al. 2020)."""

    eval_name: ClassVar[str] = "model_replacement"

    target: int = 0
    poison_fraction: float = 0.3
    per: str = "batch"
    gamma: float = 0.0
    """Scale factor; 0 = n / eta (replace the global model under FedAvg)."""
    norm_bound: float = 0.0
    """S: scale the submitted update to norm <= S; 0 = unconstrained."""
    alpha: float = 1.0
    """Weight of the classification loss vs the anomaly (distance-to-G) loss."""
    trigger: Trigger | dict = field(default_factory=lambda: Trigger(kind="patch", size=3))

    def __post_init__(self) -> None:
        check_target(self)
        check_fraction(self)
        check(self.per in ("batch", "dataset"), "per", self.per, "'batch' or 'dataset'")
        check(is_num(self.gamma) and self.gamma >= 0, "gamma", self.gamma, "a number >= 0 (0 = n/eta)")
        check(is_num(self.norm_bound) and self.norm_bound >= 0, "norm_bound", self.norm_bound,
              "a number >= 0 (0 = none)")
        check(is_num(self.alpha) and 0 < self.alpha <= 1, "alpha", self.alpha, "a number in (0, 1]")
        coerce_trigger(self)

    def effective_gamma(self, task: ClientTask) -> float:
        """gamma, or n / eta (``task.num_sampled / task.server_lr``) when ``gamma = 0``."""
        g = float(self.gamma)
        return g if g > 0 else task.num_sampled / task.server_lr

    def loss(self, model, x, y, task: ClientTask) -> torch.Tensor:
        ce = F.cross_entropy(model(x), y)
        a = float(self.alpha)
        if a == 1.0:
            return ce
        dist = sum(((p - task.global_state[k].to(p.device)) ** 2).sum() for k, p in model.named_parameters())
        return a * ce + (1 - a) * dist

    def finalize(self, task: ClientTask) -> None:
        gamma = self.effective_gamma(task)
        norm = gamma * update_norm(task.model, task.global_state, include_buffers=True)
        bound = float(self.norm_bound)
        if bound > 0 and norm > bound:
            gamma *= bound / norm
        rewrite_update(task.model, task.global_state, lambda d, k: gamma * d, include_buffers=True)
        task.metrics["replacement_gamma"] = gamma

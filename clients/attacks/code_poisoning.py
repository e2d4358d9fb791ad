"""Blind backdoor by poisoning the loss computation (code poisoning).

Bagdasaryan, Shmatikov. "Blind Backdoors in Deep Learning Models." USENIX
Security 2021, arXiv:2005.03823.

The attacker controls the training *code*, not the data: the dataset is left
untouched (``prepare`` and ``poison_batch`` are the honest ones) and the
loss synthesises, on the fly, a backdoored copy of every batch
``(x*, y*) = (mu(x), nu(y))`` (``mu`` = stamp the trigger, ``nu(y) = t`` =
``target``) and optimises the blend

    l_blind = alpha_0 l_m + alpha_1 l_m*

of the main-task loss ``l_m = L(theta(x), y)`` and the backdoor loss
``l_m* = L(theta(x*), y*)``. The weights are fixed (``task_weight`` =
``alpha_0``, ``alpha_1 = 1 - alpha_0``) or, with ``mgda = true``, chosen per
batch as in the paper by multiple-gradient descent (MGDA, Sener & Koltun,
NeurIPS 2018, arXiv:1810.04650), whose two-task case has the closed form

    alpha_0 = clip_[0,1]( ((g_* - g_m) . g_*) / ||g_m - g_*||^2 ),

the minimiser of ``||alpha g_m + (1 - alpha) g_*||`` with ``g_m``, ``g_*`` the
parameter gradients of ``l_m`` and ``l_m*``; it is then clipped to
``[min_weight, 1 - min_weight]`` so neither task is dropped. ``mgda_normalize``
rescales the gradients first (``"loss"``: ``g_i / l_i``; ``"l2"``: unit norm,
which always gives 1/2), as in Sener & Koltun's solver options. The weights of
the last batch are kept in ``task.state["last_weights"]``. The paper's optional third
(evasion) loss is not implemented. The server measures the ASR of the trigger
under the name ``"code_poisoning"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fedsec.clients.attacks._common import check, check_target, coerce_trigger, is_num
from fedsec.clients.base import Behaviour, ClientTask, register_behaviour
from fedsec.data.triggers import Trigger
from fedsec.metrics import EvalTrigger


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return sum(float((u.double() * v.double()).sum()) for u, v in zip(a, b))


def mgda_two_task(g1: list[torch.Tensor], g2: list[torch.Tensor]) -> float:
    """Weight ``a`` of task 1 minimising ``||a g1 + (1 - a) g2||`` over ``a`` in [0, 1].

    ``g1``, ``g2`` are the per-parameter gradients of the two losses (same
    shapes). Closed form ``a = ((g2 - g1) . g2) / ||g1 - g2||^2`` clipped to
    [0, 1]; 0.5 when the gradients coincide (every ``a`` is then optimal).
    """
    d11, d12, d22 = _dot(g1, g1), _dot(g1, g2), _dot(g2, g2)
    diff = d11 - 2 * d12 + d22
    if diff <= 1e-30:
        return 0.5
    return min(max((d22 - d12) / diff, 0.0), 1.0)


@register_behaviour("code_poisoning")
@dataclass(frozen=True, kw_only=True)
class CodePoisoning(Behaviour):
    """Blind backdoor (Bagdasaryan & Shmatikov 2021): the loss, not the data, is poisoned."""

    target: int = 0
    """t: the backdoor label."""
    task_weight: float = 0.5
    """alpha_0, weight of the main-task loss (alpha_1 = 1 - alpha_0); unused with ``mgda``."""
    mgda: bool = False
    """Balance the two losses per batch with two-task MGDA instead of fixed weights."""
    min_weight: float = 0.01
    """MGDA: keep each weight in [min_weight, 1 - min_weight]."""
    mgda_normalize: str = "loss"
    """MGDA gradient normalisation before solving (Sener & Koltun's options): 'none', 'loss'
    (g_i / l_i, so the task whose loss is already small is not favoured), 'l2' (g_i / ||g_i||)."""
    trigger: Trigger | dict = field(default_factory=lambda: Trigger(kind="patch", size=3))

    def __post_init__(self) -> None:
        check_target(self)
        check(is_num(self.task_weight) and 0 <= self.task_weight <= 1, "task_weight",
              self.task_weight, "a number in [0, 1]")
        check(isinstance(self.mgda, bool), "mgda", self.mgda, "true or false")
        check(is_num(self.min_weight) and 0 <= self.min_weight < 0.5, "min_weight",
              self.min_weight, "a number in [0, 0.5)")
        check(self.mgda_normalize in ("none", "loss", "l2"), "mgda_normalize", self.mgda_normalize,
              "'none', 'loss' or 'l2'")
        coerce_trigger(self)

    def loss(self, model, x, y, task: ClientTask) -> torch.Tensor:
        check(self.target < task.num_classes, "target", self.target, f"a class index < {task.num_classes}")
        x_bd = self.trigger.apply(x)
        y_bd = torch.full_like(y, self.target)
        main = F.cross_entropy(model(x), y)
        backdoor = F.cross_entropy(model(x_bd), y_bd)
        a = float(self.task_weight)
        if self.mgda:
            params = [q for q in model.parameters() if q.requires_grad]
            g1 = torch.autograd.grad(main, params, retain_graph=True, allow_unused=True)
            g2 = torch.autograd.grad(backdoor, params, retain_graph=True, allow_unused=True)
            keep = [(u, v) for u, v in zip(g1, g2) if u is not None and v is not None]
            n1, n2 = self._norms([u for u, _ in keep], [v for _, v in keep], main, backdoor)
            a = mgda_two_task([u / n1 for u, _ in keep], [v / n2 for _, v in keep])
            a = min(max(a, self.min_weight), 1 - self.min_weight)
        task.state["last_weights"] = (a, 1.0 - a)
        return a * main + (1 - a) * backdoor

    def _norms(self, g1, g2, l1: torch.Tensor, l2: torch.Tensor) -> tuple[float, float]:
        mode = self.mgda_normalize
        if mode == "loss":
            return max(float(l1.detach()), 1e-12), max(float(l2.detach()), 1e-12)
        if mode == "l2":
            return max(_dot(g1, g1) ** 0.5, 1e-12), max(_dot(g2, g2) ** 0.5, 1e-12)
        return 1.0, 1.0

    def eval_triggers(self, coalition: tuple[int, ...]) -> dict[str, EvalTrigger]:
        return {"code_poisoning": EvalTrigger(self.trigger.apply, target=self.target)}

"""Bit flips on the deployed model: progressive bit search with a flip budget.

Rakin, He, Fan. "Bit-Flip Attack: Crushing Neural Network with Progressive
Bit Search." ICCV 2019, arXiv:1903.12269 (untargeted); the targeted goal
(triggered inputs -> a target class) as in Rakin, He, Fan. "TBT: Targeted
Neural Network Attack with Bit Trojan." CVPR 2020, without TBT's neuron
selection. The lecture's post-deployment attack: the adversary does not
touch training, it flips bits of the weights in the memory of the machine
that serves the model (Rowhammer), which bypasses training-time defenses;
Dong et al. 2023 ("One-bit Flip is All You Need") push this to a single flip.

The weights of every conv / linear layer are quantised to 8-bit two's
complement per tensor (``q = round(w / s)``, ``s = max|w| / 127``; the
pure functions of :mod:`fedsec.clients.attacks.bitflip`, shared with the
malicious-client ``bitflip`` attack). Each iteration computes the gradient of
the attack objective J on the attacker's batch, ranks within every layer the
bits by the first-order gain ``grad * (flip delta) * s`` (in-layer search),
evaluates the ``top_k`` best of each layer exactly, and flips the one bit
that raises J most across layers (cross-layer search). A bit is flipped at
most once, one bit per iteration, so the Hamming distance between the int8
weights before and after equals the number of iterations, never more than
``max_flips`` (the budget). It stops when the goal is met: untargeted, J = CE
on the attacker's batch and the goal is its accuracy <= ``stop_accuracy``
(default 1.1 / C, chance); targeted, J = -CE of triggered inputs to
``target`` and the goal is ASR >= ``stop_asr``. With ``stop_on = "budget"`` the
search spends the whole budget, as the paper's fixed-iteration runs. The
figures record the goal metric on the attacker's batch and on held-out data
after every flip; ``flips_to_goal_on_eval`` is the first flip count at which
the held-out data reach the goal (None: not within the budget).

The ``bitflip_deploy`` server plugin (``[[plugins]] name = "bitflip_deploy"``,
:class:`fedsec.audit.plugins.BitFlipDeploy`, the fields of :class:`DeployAttack`) attacks the final global model at the end of the run with an attacker batch
drawn from the server's held-out clean part of the test split and measures
accuracy (and ASR) on the other part; with ``compare = ["fine_pruning",
"abd"]`` it also attacks the repaired models those plugins wrote into the run
directory (list it after them), so the flips each model needs can be compared.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedsec.audit.base import check, is_int, is_num, reject_unknown
from fedsec.data import TensorData
from fedsec.data.triggers import Trigger
from fedsec.metrics import EvalTrigger, accuracy, attack_success_rate

Objective = Callable[[nn.Module], tuple[torch.Tensor, float]]
"""model -> (J to maximise, scalar graph; the goal metric)."""


@dataclass(frozen=True)
class FlipOutcome:
    """The attacked (dequantised) copy, bits flipped, whether the goal was met, the metric per flip."""

    model: nn.Module
    flips: int
    reached: bool
    trace: list[float]
    """The goal metric after 0, 1, ..., ``flips`` flips."""
    flipped: list[tuple[str, int, int]] = field(default_factory=list)
    """(layer, flat index, bit) of every flip, in order."""
    monitored: list[float] = field(default_factory=list)
    """``monitor(model)`` after 0, 1, ..., ``flips`` flips (e.g. accuracy on held-out data)."""


def quantized_copy(model: nn.Module) -> tuple[nn.Module, list[tuple[str, nn.Parameter]], list[torch.Tensor],
                                               list[float]]:
    """A copy whose conv / linear weights are their int8-dequantised values; (copy, layers, q, scales)."""
    from fedsec.clients.attacks.bitflip import attacked_layers, quantize_int8

    net = copy.deepcopy(model)
    layers = attacked_layers(net)
    qs, scales = [], []
    with torch.no_grad():
        for _, w in layers:
            q, s = quantize_int8(w)
            w.copy_(q.to(w.dtype) * s)
            qs.append(q)
            scales.append(s)
    return net, layers, qs, scales


def progressive_bit_search(model: nn.Module, objective: Objective, goal: Callable[[float], bool] | None, *,
                           max_flips: int, top_k: int = 1,
                           monitor: Callable[[nn.Module], float] | None = None) -> FlipOutcome:
    """Progressive bit search (Rakin et al. 2019) on a quantised copy of ``model``; ``model`` is untouched.

    Stops when ``goal(metric)`` holds or after ``max_flips`` flips (``goal=None``: spend
    the whole budget, as the paper's fixed-iteration runs); ``monitor`` is recorded after
    every flip and is never used by the search.
    """
    from fedsec.clients.attacks.bitflip import flip_deltas, hamming_int8

    net, layers, qs, scales = quantized_copy(model)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(True)
    q0 = [q.clone() for q in qs]
    used = [torch.zeros(q.numel(), 8, dtype=torch.bool, device=q.device) for q in qs]
    flipped: list[tuple[str, int, int]] = []

    def set_value(li: int, flat: int, value: int) -> None:
        qs[li].view(-1)[flat] = value
        layers[li][1].data.view(-1)[flat] = value * scales[li]

    trace: list[float] = []
    monitored: list[float] = []
    reached = False
    while True:
        if monitor is not None:
            with torch.no_grad():
                monitored.append(float(monitor(net)))
        net.zero_grad(set_to_none=True)
        J, metric = objective(net)
        trace.append(metric)
        if goal is not None and goal(metric):
            reached = True
            break
        if len(flipped) >= max_flips:
            break
        J.backward()
        best: tuple[float, int, int, int, int] | None = None
        for li, ((_, w), q) in enumerate(zip(layers, qs)):
            if w.grad is None:
                continue
            deltas = flip_deltas(q)
            gain = (w.grad.detach().flatten()[:, None] * deltas.to(w.dtype) * scales[li])
            gain = gain.masked_fill(used[li], float("-inf")).flatten()
            for c in torch.topk(gain, min(top_k, gain.numel())).indices.tolist():
                flat, bit = divmod(c, 8)
                if used[li][flat, bit]:
                    continue
                old = int(q.view(-1)[flat])
                new = int(torch.tensor(old + int(deltas[flat, bit]), dtype=torch.int32).to(torch.int8))
                with torch.no_grad():
                    set_value(li, flat, new)
                    jc = float(objective(net)[0])
                    set_value(li, flat, old)
                if best is None or jc > best[0]:
                    best = (jc, li, flat, bit, new)
        if best is None:  # every bit of every reachable layer already flipped
            break
        _, li, flat, bit, new = best
        with torch.no_grad():
            set_value(li, flat, new)
        used[li][flat, bit] = True
        flipped.append((layers[li][0], flat, bit))
    net.zero_grad(set_to_none=True)
    flips = sum(hamming_int8(a, b) for a, b in zip(q0, qs))
    return FlipOutcome(model=net, flips=flips, reached=reached, trace=trace, flipped=flipped, monitored=monitored)


@dataclass(frozen=True, kw_only=True)
class DeployAttack:
    """The adversary of the deployed model: goal, budget, batch (see the module docstring)."""

    mode: str = "untargeted"
    target: int = 0
    trigger: Trigger | dict = field(default_factory=lambda: Trigger(kind="patch", size=3))
    max_flips: int = 30
    top_k: int = 1
    attack_batch: int = 128
    stop_accuracy: float = 0.0
    """Untargeted goal: attacker-batch accuracy at or below this; 0 = 1.1 / C."""
    stop_asr: float = 0.99
    stop_on: str = "goal"
    """'goal': stop when the attacker's batch meets the goal; 'budget': spend all ``max_flips``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> DeployAttack:
        reject_unknown(cls, args, kwargs, "bitflip_deploy")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        own = "bitflip_deploy"
        check(self.mode in ("untargeted", "targeted"), own, "mode", self.mode, "'untargeted' or 'targeted'")
        check(is_int(self.target) and self.target >= 0, own, "target", self.target, "a class index >= 0")
        check(is_int(self.max_flips) and self.max_flips >= 0, own, "max_flips", self.max_flips, "an integer >= 0")
        check(is_int(self.top_k) and self.top_k >= 1, own, "top_k", self.top_k, "an integer >= 1")
        check(is_int(self.attack_batch) and self.attack_batch >= 1, own, "attack_batch", self.attack_batch,
              "an integer >= 1")
        check(is_num(self.stop_accuracy) and 0 <= self.stop_accuracy <= 1, own, "stop_accuracy",
              self.stop_accuracy, "a number in [0, 1] (0 = 1.1 / C)")
        check(is_num(self.stop_asr) and 0 < self.stop_asr <= 1, own, "stop_asr", self.stop_asr, "a number in (0, 1]")
        check(self.stop_on in ("goal", "budget"), own, "stop_on", self.stop_on, "'goal' or 'budget'")
        try:
            object.__setattr__(self, "trigger", Trigger.from_spec(self.trigger, "trigger"))
        except ValueError as e:
            raise ValueError(f"{own}.{e}") from None

    def run(self, model: nn.Module, attack: TensorData, evaluation: TensorData, num_classes: int,
            generator: torch.Generator) -> dict[str, Any]:
        """Attack ``model`` with a batch drawn from ``attack``; figures measured on ``evaluation``."""
        check(self.target < num_classes, "bitflip_deploy", "target", self.target, f"a class index < {num_classes}")
        dev = next(model.parameters()).device
        idx = torch.randperm(len(attack), generator=generator)[: self.attack_batch]
        x, y = attack.x[idx].to(dev), attack.y[idx].to(dev)
        trig = EvalTrigger(self.trigger.apply, target=self.target)
        if self.mode == "untargeted":
            stop = self.stop_accuracy or 1.1 / num_classes

            def objective(m: nn.Module) -> tuple[torch.Tensor, float]:
                out = m(x)
                return F.cross_entropy(out, y), float((out.argmax(1) == y).float().mean())

            goal = lambda metric: metric <= stop  # noqa: E731
        else:
            keep = y != self.target
            xt = self.trigger.apply(x[keep] if bool(keep.any()) else x)
            yt = torch.full((len(xt),), self.target, dtype=torch.long, device=dev)

            def objective(m: nn.Module) -> tuple[torch.Tensor, float]:
                out = m(xt)
                return -F.cross_entropy(out, yt), float((out.argmax(1) == yt).float().mean())

            goal = lambda metric: metric >= self.stop_asr  # noqa: E731
        quant, _, _, _ = quantized_copy(model)
        if self.mode == "untargeted":
            monitor = lambda m: accuracy(m, evaluation)  # noqa: E731
            chance = self.stop_accuracy or 1.1 / num_classes
            held_out_goal = lambda v: v <= chance  # noqa: E731
        else:
            monitor = lambda m: attack_success_rate(m, evaluation, trig)  # noqa: E731
            held_out_goal = lambda v: v >= self.stop_asr  # noqa: E731
        out = progressive_bit_search(model, objective, goal if self.stop_on == "goal" else None,
                                     max_flips=self.max_flips, top_k=self.top_k, monitor=monitor)
        res: dict[str, Any] = {
            "mode": self.mode,
            "acc": accuracy(model, evaluation),
            "acc_quantized": accuracy(quant, evaluation),
            "acc_after": accuracy(out.model, evaluation),
            "flips": out.flips,
            "reached": out.reached or goal(out.trace[-1]),
            "budget": self.max_flips,
            "attack_metric": out.trace,
            "eval_metric": out.monitored,
            "flips_to_goal_on_eval": next((k for k, v in enumerate(out.monitored) if held_out_goal(v)), None),
            "n_attack": len(idx),
            "n_eval": len(evaluation),
        }
        if self.mode == "targeted":
            res["asr_quantized"] = attack_success_rate(quant, evaluation, trig)
            res["asr_after"] = attack_success_rate(out.model, evaluation, trig)
        return res


__all__ = ["DeployAttack", "FlipOutcome", "progressive_bit_search", "quantized_copy"]

"""Fine-pruning: prune the last conv layer's dormant channels, then fine-tune (a repair).

Liu, Dolan-Gavitt, Garg. "Fine-Pruning: Defending Against Backdooring Attacks
on Deep Neural Networks." RAID 2018, arXiv:1805.12185. Reference code
github.com/kangliucn/Fine-pruning-defense (``conv_output_prune.py``; read, not
copied).

The defender, who holds a small clean set, measures each channel's mean
activation over the clean set in the last convolutional layer (the backdoor
hides in neurons the clean inputs leave dormant, Sec. 3), prunes channels in
increasing order of that activation, and stops before the clean accuracy
(on the same clean set) falls more than ``max_acc_drop`` below the unpruned
model's (the paper's pruning defense stops at a fixed accuracy drop; the
reference prunes a fixed count, ``prune_ratio`` here). The pruned network is
then fine-tuned on the clean set with plain SGD (the project's one loop,
:func:`fedsec.training.sgd_train`), which the paper shows removes backdoors
that survive pruning alone (Sec. 4, fine-pruning).

A channel is pruned by zeroing its kernel and bias (and those of a
``BatchNorm2d`` that directly follows, so its output is exactly 0); behind a
ReLU its gradient is then 0, so fine-tuning cannot revive it, and the mask is
re-applied after fine-tuning to make that hold for any architecture. The state
dict keeps its keys and shapes (the repaired model loads like the original).
In residual networks only the last block's residual branch is pruned.

Compared with the reference code and two reimplementations: the reference
ranks the 60 channels of ``conv3`` by their mean ``pool3`` output over the
test set and prunes a fixed 48; BackdoorBench (``defense/fp/fp.py``) ranks
the last block's output on 5% of the training data and stops before the clean
accuracy falls by 10% (relative); TrojanZoo prunes 95% unless accuracy falls by
20 points. Here the ranking is the mean ReLU output of the last conv layer
before pooling, and the stop is ``max_acc_drop`` (absolute) on the server's
clean set, whose size is the plugins' and ``fedsec audit``'s
``server_fraction`` (of the test split).

The paper's premise, that the backdoor lives in channels the clean data leave
dormant, is what fails on ``digits_scenes`` (``experiments/plugins/audit.md``):
there the trigger's extra activation goes to channels the clean images use
(the more active a channel, the more the trigger adds), with 29 of 32 channels
pruned the ASR stays at 96-99% in 3 of 5 models while accuracy falls to 36%, so
no stop rule and no clean-set size rescues pruning, and fine-tuning on a few
hundred images does not unlearn a trigger it never sees. On 8x8 digits (black background) pruning
alone also leaves the backdoor, but pruning then fine-tuning removes it. Ranking by what a
reversed trigger excites instead (Neural Cleanse's ``mitigate = "prune"``,
:mod:`fedsec.audit.neuron_pruning`) does remove the ``digits_scenes`` backdoor.

It is a repair, not a test: ``flagged`` is always False and ``score`` is the
fraction of channels pruned. The figures report clean accuracy and the ASR
of every known trigger on the evaluation set before, after pruning and after
fine-tuning (accuracy cost and ASR reduction).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedsec.audit.base import AuditResult, AuditTarget, Detector, is_int, is_num, register_detector
from fedsec.audit.features import acc_and_asr, channel_activity, last_conv
from fedsec.metrics import accuracy
from fedsec.training import sgd_train


def _following_bn(model: nn.Module, conv_name: str) -> nn.BatchNorm2d | None:
    names = [n for n, _ in model.named_modules()]
    mods = dict(model.named_modules())
    i = names.index(conv_name)
    if i + 1 < len(names) and isinstance(mods[names[i + 1]], nn.BatchNorm2d):
        return mods[names[i + 1]]
    return None


@torch.no_grad()
def prune_channels(model: nn.Module, conv_name: str, channels: torch.Tensor) -> None:
    """Zero the output ``channels`` of the conv ``conv_name`` (and of a BatchNorm right after it), in place."""
    conv = dict(model.named_modules())[conv_name]
    idx = channels.to(conv.weight.device, torch.long)
    conv.weight[idx] = 0
    if conv.bias is not None:
        conv.bias[idx] = 0
    bn = _following_bn(model, conv_name)
    if bn is not None and bn.affine:
        bn.weight[idx.to(bn.weight.device)] = 0
        bn.bias[idx.to(bn.bias.device)] = 0


def pruning_order(activity: torch.Tensor) -> torch.Tensor:
    """Channel indices in increasing mean activation (ties by index: a stable order)."""
    return torch.sort(activity, stable=True).indices


@register_detector("fine_pruning")
@dataclass(frozen=True, kw_only=True)
class FinePruning(Detector):
    """Fine-pruning (Liu et al. RAID 2018): prune dormant last-conv channels, fine-tune on clean data."""

    kind = "model"

    max_acc_drop: float = 0.05
    """Stop pruning before clean accuracy (on the clean set) drops by more than this."""
    prune_ratio: float = 0.0
    """If > 0: prune exactly this fraction of the channels instead (the reference prunes 48 of 60)."""
    epochs: int = 10
    """Fine-tuning epochs over the clean set (0 = pruning only)."""
    lr: float = 0.05
    """Fine-tuning learning rate (the shipped scenarios' client lr; at 0.01 the backdoor partly survives, audit.md)."""
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32

    def __post_init__(self) -> None:
        self._check(is_num(self.max_acc_drop) and 0 <= self.max_acc_drop <= 1, "max_acc_drop",
                    self.max_acc_drop, "a number in [0, 1]")
        self._check(is_num(self.prune_ratio) and 0 <= self.prune_ratio < 1, "prune_ratio", self.prune_ratio,
                    "a number in [0, 1) (0 = stop at max_acc_drop)")
        self._check(is_int(self.epochs) and self.epochs >= 0, "epochs", self.epochs, "an integer >= 0")
        self._check(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", self.batch_size,
                    "an integer >= 1")
        self._check(is_num(self.lr) and self.lr > 0, "lr", self.lr, "a number > 0")
        self._check(is_num(self.momentum) and 0 <= self.momentum < 1, "momentum", self.momentum,
                    "a number in [0, 1)")
        self._check(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", self.weight_decay,
                    "a number >= 0")

    def prune(self, model: nn.Module, clean) -> tuple[nn.Module, torch.Tensor, list[float]]:
        """A pruned copy of ``model``, the pruned channel indices and the accuracy after each prune."""
        net = copy.deepcopy(model)
        name, conv = last_conv(net)
        order = pruning_order(channel_activity(net, conv, clean.x))
        n = conv.out_channels
        if self.prune_ratio > 0:
            k = int(round(self.prune_ratio * n))
            prune_channels(net, name, order[:k])
            return net, order[:k], [accuracy(net, clean)]
        base = accuracy(net, clean)
        curve: list[float] = []
        kept = 0
        for k in range(1, n):  # never the whole layer: the network would be constant
            trial = copy.deepcopy(net)
            prune_channels(trial, name, order[:k])
            acc = accuracy(trial, clean)
            if base - acc > self.max_acc_drop:
                break
            curve.append(acc)
            kept = k
        prune_channels(net, name, order[:kept])
        return net, order[:kept], curve

    def repair(self, target: AuditTarget) -> tuple[nn.Module, AuditResult]:
        """(the fine-pruned copy of ``target.model``, the figures)."""
        dev = target.device
        original = copy.deepcopy(target.model).to(dev)
        triggers = dict(target.eval_triggers)
        before = acc_and_asr(original, target.eval_set, triggers)
        net, pruned, curve = self.prune(original, target.clean)
        after_prune = acc_and_asr(net, target.eval_set, triggers)
        if self.epochs > 0:
            sgd_train(net, target.clean, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                      momentum=self.momentum, weight_decay=self.weight_decay, generator=target.generator,
                      device=dev)
            prune_channels(net, last_conv(net)[0], pruned)
        net.eval()
        after = acc_and_asr(net, target.eval_set, triggers)
        n = last_conv(net)[1].out_channels
        figures: dict[str, Any] = {
            "layer": last_conv(net)[0],
            "channels": n,
            "pruned": pruned.tolist(),
            "pruned_fraction": len(pruned) / n,
            "clean_acc_curve": curve,
            "before": before,
            "after_pruning": after_prune,
            "after_fine_tuning": after,
            "acc_cost": before["acc"] - after["acc"],
            "asr_reduction": {k: before["asr"][k] - after["asr"][k] for k in triggers},
            "n_clean": len(target.clean),
            "n_eval": len(target.eval_set),
            "params": self.params(),
        }
        return net, AuditResult(flagged=False, score=len(pruned) / n, target=None, figures=figures,
                                detector=self.name)

    def audit(self, target: AuditTarget) -> AuditResult:
        return self.repair(target)[1]


__all__ = ["FinePruning", "prune_channels", "pruning_order"]

"""Neurotoxin: a durable backdoor trained on the coordinates benign clients change least.

Zhang, Panda, Song, Yang, Mahoney, Gonzalez, Ramchandran, Mittal.
"Neurotoxin: Durable Backdoors in Federated Learning." ICML 2022,
arXiv:2206.10341; reference code github.com/jhcknzzm/Federated-Learning-Backdoor
(``FL_Backdoor_CV``: ``helper.grad_mask_cv``, ``train_funcs.apply_grad_mask``).

A backdoor that lives in the coordinates the benign clients update most is
overwritten soon after the attack stops. Neurotoxin estimates the benign
update by the gradient of the received global model G^t on clean data,
finds its top-k% coordinates by magnitude and trains the backdoor with those
coordinates of every gradient set to zero (projected onto the bottom
100 - k%), so the backdoor sits where benign training rarely writes.

As in the authors' code (``aggregate_all_layer = 1``): the estimate is the
summed gradient of the cross-entropy over the attacker's clean local data,
computed once per round before training (in ``prepare``, on the model as
received, i.e. G^t; their attacker uses clean data of other participants,
a client here has only its own); the top-k is taken over all parameters
together; the mask is a 0/1 factor applied to ``p.grad`` after every
``backward`` (``on_gradients``). ``mask_ratio`` is the paper's k as a
fraction: the authors' ``gradmask_ratio`` is the kept fraction, 1 - k (their
CIFAR runs: 0.95-0.99, i.e. k = 1-5%): they keep the ``int((1 - k) D)``
smallest-magnitude coordinates, we zero the ``round(k D)`` largest (the two
counts differ by at most one coordinate). Weight decay, applied inside the
optimiser step, is not masked (the authors' attacker uses it too).

Norm bound: the authors' CV attacker (``train_cv_poison``) is not projected;
their server clips every client's update to ``s_norm`` (0.2 on CIFAR) before
averaging, i.e. fedsec's ``norm_clip`` rule. Their NLP code has an optional
per-step projection (``--PGD``, off in the released commands). Their released
commands also give Neurotoxin a larger attacker learning rate than the
baseline (CIFAR-10: 0.02 vs 0.003); fedsec's comparison keeps BadNets and
Neurotoxin at the same learning rate and epochs (the same budget), and the
mask is the only difference. Measured durability on digits:
``experiments/attacks/neurotoxin_durability.md``.

The poisoning itself is BadNets' (same trigger, target, poisoned fraction,
per batch or per dataset), so a Neurotoxin run and a BadNets run with the
same parameters differ only by the mask; its ASR is reported as
``"neurotoxin"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedsec.clients.attacks._common import check, is_num
from fedsec.clients.attacks.badnets import BadNets
from fedsec.clients.base import ClientTask, register_behaviour
from fedsec.data import TensorData

MASK_KEY = "neurotoxin_mask"
"""task.state key of the mask: parameter name -> 0/1 tensor of the parameter's shape."""


def top_k_mask(scores: Mapping[str, torch.Tensor], ratio: float) -> dict[str, torch.Tensor]:
    """0/1 masks (same shapes as ``scores``) that are 0 on the ``round(ratio * D)`` coordinates
    with the largest ``|score|`` over all tensors together (D = total size), 1 elsewhere.

    Ties at the threshold are broken by position (``torch.topk``'s choice).
    """
    names = list(scores)
    flat = torch.cat([scores[k].detach().abs().reshape(-1) for k in names])
    keep = torch.ones_like(flat)
    count = int(round(ratio * flat.numel()))
    if count > 0:
        keep[torch.topk(flat, count).indices] = 0.0
    out, start = {}, 0
    for k in names:
        n = scores[k].numel()
        out[k] = keep[start:start + n].reshape(scores[k].shape)
        start += n
    return out


def clean_gradient(model: nn.Module, data: TensorData, batch_size: int,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """Sum over mini-batches (in data order) of the gradient of the mean cross-entropy,
    per parameter name (zeros for frozen parameters).

    Leaves the model's parameters, buffers (batch-norm statistics) and
    ``.grad`` as they were.
    """
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    saved = {k: p.grad for k, p in model.named_parameters()}
    every = dict(model.named_parameters())
    params = {k: p for k, p in every.items() if p.requires_grad}
    total = {k: torch.zeros_like(p) for k, p in every.items()}
    model.train()
    for start in range(0, len(data), batch_size):
        x = data.x[start:start + batch_size].to(device)
        y = data.y[start:start + batch_size].to(device)
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values()), allow_unused=True)
        for k, g in zip(params, grads):
            if g is not None:
                total[k] += g
    with torch.no_grad():
        for k, b in model.named_buffers():
            b.copy_(buffers[k])
    for k, p in every.items():
        p.grad = saved[k]
    return total


@register_behaviour("neurotoxin")
@dataclass(frozen=True, kw_only=True)
class Neurotoxin(BadNets):
    """Neurotoxin (Zhang et al. 2022): BadNets poisoning with gradients masked to zero on the
    top-k% coordinates of the benign-gradient estimate, for a backdoor that outlives the attack."""

    eval_name: ClassVar[str] = "neurotoxin"

    mask_ratio: float = 0.05
    """k: fraction of coordinates (largest benign-gradient magnitude) the attack never writes;
    0 = plain BadNets. Authors' gradmask_ratio = 1 - k."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(is_num(self.mask_ratio) and 0 <= self.mask_ratio < 1, "mask_ratio", self.mask_ratio,
              "a number in [0, 1)")

    def prepare(self, task: ClientTask) -> None:
        self.check_classes(task)
        model = task.model.to(task.device)
        grad = clean_gradient(model, task.data, task.config.batch_size, task.device)
        task.state[MASK_KEY] = top_k_mask(grad, float(self.mask_ratio))
        super().prepare(task)

    def on_gradients(self, task: ClientTask) -> None:
        mask = task.state[MASK_KEY]
        for k, p in task.model.named_parameters():
            if p.grad is not None:
                p.grad.mul_(mask[k].to(device=p.grad.device, dtype=p.grad.dtype))

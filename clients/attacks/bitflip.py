"""Bit-flip attacks on the weights: progressive bit search and random faults.

``bitflip``: Rakin, He, Fan. "Bit-Flip Attack: Crushing Neural Network with
Progressive Bit Search." ICCV 2019, arXiv:1903.12269; targeted mode in the
spirit of Rakin, He, Fan. "TBT: Targeted Neural Network Attack with Bit
Trojan." CVPR 2020, arXiv:1909.05193.

The weights ``W_l`` of every conv / linear layer are quantised to 8-bit two's
complement per layer (``Delta w_l = max|W_l| / (2^(N_q - 1) - 1)``, ``N_q =
8``). Each iteration of the progressive bit search computes the gradient of
the attack loss ``L`` w.r.t. the dequantised weights on an attacker batch;
within every layer the ``top_k`` bits with the largest first-order loss
increase ``grad * (flip delta)`` are candidates, each evaluated exactly (the
loss after flipping that single bit; ``top_k = 1`` is BFA's in-layer search
with ``n_b = 1`` flip per iteration), and across layers the single flip that
raises ``L`` most is kept (in-layer then cross-layer search). A bit is flipped
at most once. It stops after ``max_flips`` flips or when the attack goal is met:
untargeted (maximise CE on attacker data) when the attacker-batch accuracy
falls to ``stop_accuracy`` (default 1.1 / C, near chance); targeted (minimise
CE of triggered inputs to ``target``, TBT's goal, without TBT's trojan-neuron
selection) when the triggered attacker batch reaches ``stop_asr``. The
dequantised weights are written back (other tensors keep their trained
values); ``flipped_bits`` in the metrics is the Hamming distance between the
int8 weights before and after.

The attack runs after honest local training (``train_first = true``) or on
the received global model itself (``train_first = false``: the trained
weights are discarded and the global model is attacked). The attacker batch
is drawn with ``task.generator`` from the data the client trained on
(``task.data`` in ``finalize``).

``bitflip_random``: random faults (the hardware model of Rowhammer-style
errors): ``flips`` random bits in the float32 parameters, by default among
the 8 exponent bits (23..30), where a single flip can multiply a weight by
up to 2^128.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from fedsec.clients.attacks._common import check, check_target, coerce_trigger, is_int, is_num
from fedsec.clients.base import Behaviour, ClientTask, register_behaviour
from fedsec.data.triggers import Trigger
from fedsec.metrics import EvalTrigger

_BIT_VALUES = torch.tensor([1, 2, 4, 8, 16, 32, 64, -128], dtype=torch.int32)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Symmetric per-tensor int8: ``q = round(w / s)``, ``s = max|w| / 127``."""
    s = float(w.detach().abs().max()) / 127.0
    if s == 0.0:
        s = 1.0 / 127.0
    q = torch.round(w.detach() / s).clamp(-127, 127).to(torch.int8)
    return q, s


def flip_deltas(q: torch.Tensor) -> torch.Tensor:
    """(numel, 8) int32: change of each int8 value when each of its 8 bits is flipped."""
    bits = (q.to(torch.int32).flatten().unsqueeze(1) & 0xFF) >> torch.arange(8, device=q.device) & 1
    vals = _BIT_VALUES.to(q.device)
    return torch.where(bits.bool(), -vals, vals)


def hamming_int8(a: torch.Tensor, b: torch.Tensor) -> int:
    x = (a.to(torch.int32) ^ b.to(torch.int32)) & 0xFF
    return int(sum(int(((x >> i) & 1).sum()) for i in range(8)))


def attacked_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Weights of conv / linear layers (dims >= 2), the quantised tensors BFA attacks."""
    return [(n, p) for n, p in model.named_parameters() if n.endswith("weight") and p.ndim >= 2]


@register_behaviour("bitflip")
@dataclass(frozen=True, kw_only=True)
class BitFlip(Behaviour):
    """Progressive bit search on int8-quantised weights (Rakin et al. 2019 / TBT 2020)."""

    mode: str = "untargeted"
    """'untargeted' (BFA) or 'targeted' (TBT-style: triggered inputs -> target)."""
    target: int = 0
    max_flips: int = 20
    top_k: int = 1
    """Candidate bits per layer and iteration, ranked by grad * flip delta, each evaluated exactly."""
    attack_batch: int = 128
    """Attacker samples drawn from the local data for the search."""
    stop_accuracy: float = 0.0
    """Untargeted: stop at this attacker-batch accuracy; 0 = 1.1 / C."""
    stop_asr: float = 0.99
    train_first: bool = True
    trigger: Trigger | dict = field(default_factory=lambda: Trigger(kind="patch", size=3))

    def __post_init__(self) -> None:
        check(self.mode in ("untargeted", "targeted"), "mode", self.mode, "'untargeted' or 'targeted'")
        check_target(self)
        check(is_int(self.max_flips) and self.max_flips >= 0, "max_flips", self.max_flips, "an integer >= 0")
        check(is_int(self.top_k) and self.top_k >= 1, "top_k", self.top_k, "an integer >= 1")
        check(is_int(self.attack_batch) and self.attack_batch >= 1, "attack_batch", self.attack_batch,
              "an integer >= 1")
        check(is_num(self.stop_accuracy) and 0 <= self.stop_accuracy <= 1, "stop_accuracy",
              self.stop_accuracy, "a number in [0, 1] (0 = near chance)")
        check(is_num(self.stop_asr) and 0 < self.stop_asr <= 1, "stop_asr", self.stop_asr,
              "a number in (0, 1]")
        check(isinstance(self.train_first, bool), "train_first", self.train_first, "true or false")
        coerce_trigger(self)

    def _objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(J to maximise, goal metric: accuracy (untargeted) / ASR (targeted))."""
        if self.mode == "untargeted":
            out = model(x)
            return F.cross_entropy(out, y), float((out.argmax(1) == y).float().mean())
        xt = self.trigger.apply(x)
        yt = torch.full_like(y, self.target)
        out = model(xt)
        return -F.cross_entropy(out, yt), float((out.argmax(1) == yt).float().mean())

    def finalize(self, task: ClientTask) -> None:
        model = task.model
        if not self.train_first:
            model.load_state_dict(task.global_state)
        data = task.data  # the attacker batch comes from the data the client trained on
        if len(data) == 0:
            task.metrics["flipped_bits"] = 0.0
            return
        idx = torch.randperm(len(data), generator=task.generator)[: self.attack_batch]
        x, y = data.x[idx].to(task.device), data.y[idx].to(task.device)
        if self.mode == "untargeted":
            goal_reached = lambda m: m <= (self.stop_accuracy or 1.1 / task.num_classes)  # noqa: E731
        else:
            keep = y != self.target
            x, y = (x[keep], y[keep]) if bool(keep.any()) else (x, y)
            goal_reached = lambda m: m >= self.stop_asr  # noqa: E731

        was_training = model.training
        model.eval()
        layers = attacked_layers(model)
        quant = [quantize_int8(w) for _, w in layers]
        q0 = [q.clone() for q, _ in quant]
        qs = [q.clone() for q, _ in quant]
        scales = [s for _, s in quant]
        used = [torch.zeros(q.numel(), 8, dtype=torch.bool, device=q.device) for q in qs]
        with torch.no_grad():
            for (_, w), q, s in zip(layers, qs, scales):
                w.copy_(q.to(w.dtype) * s)

        def set_value(li: int, flat: int, new: int) -> None:
            qs[li].view(-1)[flat] = new
            layers[li][1].data.view(-1)[flat] = new * scales[li]

        for _ in range(self.max_flips):
            model.zero_grad(set_to_none=True)
            J, metric = self._objective(model, x, y)
            if goal_reached(metric):
                break
            J.backward()
            best = None  # (J after flip, layer, flat index, new value)
            for li, ((_, w), q) in enumerate(zip(layers, qs)):
                if w.grad is None:  # layer not on the attack loss's path
                    continue
                deltas = flip_deltas(q)  # (numel, 8)
                gain = w.grad.detach().flatten().unsqueeze(1) * deltas.to(w.dtype) * scales[li]
                gain = gain.masked_fill(used[li], float("-inf"))
                k = min(self.top_k, gain.numel())
                cand = torch.topk(gain.flatten(), k).indices
                for c in cand.tolist():
                    flat, bit = divmod(c, 8)
                    if used[li][flat, bit]:
                        continue
                    old = int(q.view(-1)[flat])
                    new = int(torch.tensor(old + int(deltas[flat, bit]), dtype=torch.int32).to(torch.int8))
                    with torch.no_grad():
                        set_value(li, flat, new)
                        Jc, _ = self._objective(model, x, y)
                        set_value(li, flat, old)
                    if best is None or float(Jc) > best[0]:
                        best = (float(Jc), li, flat, bit, new)
            if best is None:
                break
            _, li, flat, bit, new = best
            with torch.no_grad():
                set_value(li, flat, new)
            used[li][flat, bit] = True
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            _, metric = self._objective(model, x, y)
        model.train(was_training)
        flipped = sum(hamming_int8(a, b) for a, b in zip(q0, qs))
        task.metrics["flipped_bits"] = float(flipped)
        task.metrics["attack_accuracy" if self.mode == "untargeted" else "attack_asr"] = metric

    def eval_triggers(self, coalition: tuple[int, ...]) -> dict[str, EvalTrigger]:
        if self.mode != "targeted":
            return {}
        return {"bitflip": EvalTrigger(self.trigger.apply, target=self.target)}


@register_behaviour("bitflip_random")
@dataclass(frozen=True, kw_only=True)
class RandomBitFlip(Behaviour):
    """Random bit faults in float32 weights after honest training (hardware-fault model)."""

    flips: int = 10
    """Number of random bit flips in the float32 parameters."""
    exponent_only: bool = True
    """Flip only exponent bits (23..30); false = any of the 32 bits."""

    def __post_init__(self) -> None:
        check(is_int(self.flips) and self.flips >= 0, "flips", self.flips, "an integer >= 0")
        check(isinstance(self.exponent_only, bool), "exponent_only", self.exponent_only, "true or false")

    @torch.no_grad()
    def finalize(self, task: ClientTask) -> None:
        params = [q for q in task.model.parameters() if q.dtype == torch.float32]
        sizes = torch.tensor([q.numel() for q in params])
        total = int(sizes.sum())
        if total == 0 or self.flips == 0:
            task.metrics["flipped_bits"] = 0.0
            return
        offsets = torch.cumsum(sizes, 0) - sizes
        pos = torch.randperm(total, generator=task.generator)[: self.flips]
        lo, span = (23, 8) if self.exponent_only else (0, 32)
        bits = lo + torch.randint(span, (len(pos),), generator=task.generator)
        for flat, bit in zip(pos.tolist(), bits.tolist()):
            li = int(torch.searchsorted(offsets, torch.tensor(flat), right=True)) - 1
            view = params[li].data.view(-1).view(torch.int32)
            i = flat - int(offsets[li])
            mask = torch.tensor(1 << bit if bit < 31 else -(1 << 31), dtype=torch.int32)
            view[i] = view[i] ^ mask.to(view.device)
        task.metrics["flipped_bits"] = float(len(pos))

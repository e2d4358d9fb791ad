"""Sign flipping: submit the reversed (and scaled) local update.

Li, Xu, Chen, Giannakis, Ling. "RSA: Byzantine-Robust Stochastic Aggregation
Methods for Distributed Learning from Heterogeneous Datasets." AAAI 2019,
arXiv:1811.03761 (the sign-flipping Byzantine attack). The attacker trains
honestly to ``X`` from the global model ``G`` and submits
``G - s (X - G)`` (``s``: ``scale``), i.e. its update with the sign flipped,
pointing uphill on the training loss.

Only trainable parameters are rewritten unless ``include_buffers`` is set
(then also floating-point buffers such as BatchNorm running statistics).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsec.clients.attacks._common import check, is_num, rewrite_update
from fedsec.clients.base import Behaviour, ClientTask, register_behaviour


@register_behaviour("sign_flip")
@dataclass(frozen=True, kw_only=True)
class SignFlip(Behaviour):
    """Train honestly to X, then submit G - scale * (X - G) (Li et al. 2019)."""

    scale: float = 1.0
    """s: the submitted update is -s times the honest one."""
    include_buffers: bool = False

    def __post_init__(self) -> None:
        check(is_num(self.scale) and self.scale > 0, "scale", self.scale, "a number > 0")
        check(isinstance(self.include_buffers, bool), "include_buffers", self.include_buffers,
              "true or false")

    def finalize(self, task: ClientTask) -> None:
        s = float(self.scale)
        rewrite_update(task.model, task.global_state, lambda d, k: -s * d,
                       include_buffers=self.include_buffers)

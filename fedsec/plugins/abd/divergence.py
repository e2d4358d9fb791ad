"""The one divergence of ABD: KL between two softmax distributions, per input.

KL is summed over classes; the reference's ``F.kl_div(reduction="mean")`` divides
by the number of classes C, which leaves every ratio of KL terms unchanged but
makes ``sr_l2`` C times weaker relative to the SR inner KL.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kl_per_sample(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KL(softmax(p/T) || softmax(q/T))`` per row: logits (B, C) -> (B,), in nats."""
    logp = F.log_softmax(p_logits / temperature, dim=1)
    logq = F.log_softmax(q_logits / temperature, dim=1)
    return (logp.exp() * (logp - logq)).sum(1)

"""Fang et al.'s local model poisoning attacks on Krum and on trimmed mean / median.

Fang, Cao, Jia, Gong. "Local Model Poisoning Attacks to Byzantine-Robust
Federated Learning." USENIX Security 2020, arXiv:1911.11815. Reference code
read: the FLTrust/FLDetector authors' ``full_krum``/``full_trim`` (same group),
the NDSS'21 notebooks of Shejwalkar & Houmansadr
(``get_malicious_updates_fang``, ``get_malicious_updates_fang_trmean``) and
FLPoison's ``FangAttack``.

The attack works in update space (an update is a client model minus the
global model w_Re, so w_Re is the origin). The deviation direction is
``s = sign(mean of the benign updates)``, the direction each parameter would
move without an attack; the attackers push the other way. Which benign
updates the adversary knows is ``knowledge``: the honest rows of the round
(``"full"``) or only its own clients' genuine updates (``"partial"``).

``target = "krum"`` (Sec. 4.2, "Attacking Krum"): every attacker submits
``-lambda * s`` (the paper's w'_1 = w_Re - lambda s; the c - 1 supporters
submit the same vector, as in the NDSS'21 and FLPoison code). lambda starts
at the upper bound of Theorem 1 (:func:`krum_lambda_bound`) and is halved
until the rule selects a crafted update or lambda falls below ``threshold``
(the paper's 1e-5); the last lambda tried is submitted. "Selected" is decided
by the server's rule when the federation passes it (``accepted`` holds a
malicious row; :mod:`fedsec.clients.attacks._adaptive` says how the round is
simulated), by Krum with f = c otherwise (:func:`krum_selects`). Against a
rule that accepts every client the first lambda, the bound, is kept.

``target = "trmean"`` (Sec. 4.3, "Attacking Trimmed mean", used unchanged
against median): per coordinate j, with w_max,j / w_min,j the largest /
smallest benign value, each attacker draws its value uniformly (with the
attack's generator, independently per attacker and coordinate) in

- s_j < 0 (the benign update lowers w_j; push it up): [w_max,j, b w_max,j]
  if w_max,j > 0, else between w_max,j / b and w_max,j;
- s_j > 0 (push it down): [w_min,j / b, w_min,j] if w_min,j > 0, else
  [b w_min,j, w_min,j];

with ``b = 2`` in the paper (``b``). With partial knowledge the benign
extremes are unknown; as in the paper's partial-knowledge variant the
attackers estimate the benign mean mu_j and standard deviation sigma_j from
their own genuine updates and draw in [mu_j + 3 sigma_j, mu_j + 4 sigma_j]
(s_j < 0) or [mu_j - 4 sigma_j, mu_j - 3 sigma_j] (s_j > 0). Coordinates with
s_j = 0 get the benign mean. The trimmed-mean attack does not read the rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedsec.clients.attacks._adaptive import RuleProbe, simulated_round
from fedsec.clients.attacks._common import check, is_num
from fedsec.clients.attacks.omniscient import KNOWLEDGE, coordinate_std, reference_updates
from fedsec.clients.base import Colluding, Rule, register_behaviour

TARGETS = ("krum", "trmean")


# -- the maths ---------------------------------------------------------------------------
def deviation_sign(ref: torch.Tensor) -> torch.Tensor:
    """s (d,): sign of the mean of the benign updates ``ref`` (k, d)."""
    return torch.sign(ref.mean(0))


def krum_lambda_bound(ref: torch.Tensor, c: int) -> float:
    """Theorem 1's upper bound on lambda, in update space (w_Re = 0).

    With m = k + c clients (k = len(ref) benign, c attackers) and d coordinates:
    ``1/((m - 2c - 1) sqrt(d)) * min_i sum_{l in Gamma_i} ||w_l - w_i||
    + 1/sqrt(d) * max_i ||w_i||``, where Gamma_i are the m - c - 2 benign
    updates closest to benign update w_i (Euclidean distances, not squared).
    Where Krum's own condition m > 2c + 2 fails, m - 2c - 1 is taken as 1 and
    at least one neighbour is used (the bound is only the search's start).
    """
    k, d = ref.shape
    dist = torch.cdist(ref, ref)
    dist.fill_diagonal_(float("inf"))
    neighbours = min(max(k - 2, 1), k - 1)
    first = 0.0
    if neighbours >= 1:
        near = torch.topk(dist, neighbours, dim=1, largest=False).values.sum(1)
        first = float(near.min()) / (max(k - c - 1, 1) * math.sqrt(d))
    return first + float(ref.norm(dim=1).max()) / math.sqrt(d)


def krum_selects(X: torch.Tensor, f: int) -> int:
    """Index of the row Krum (Blanchard et al. 2017) selects: the lowest sum of squared
    distances to its n - f - 2 nearest other rows (at least 1, at most n - 1)."""
    n = X.shape[0]
    if n == 1:
        return 0
    sq = torch.cdist(X, X) ** 2
    sq.fill_diagonal_(float("inf"))
    neighbours = min(max(n - f - 2, 1), n - 1)
    return int(torch.topk(sq, neighbours, dim=1, largest=False).values.sum(1).argmin())


def trmean_intervals(ref: torch.Tensor, s: torch.Tensor, b: float, knowledge: str
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high), each (d,): the interval each attacker samples coordinate j from.

    ``ref`` (k, d) benign updates, ``s`` (d,) deviation signs, ``b`` > 1 the
    paper's scale. Full knowledge: from the benign extremes; partial: from
    the mean and standard deviation of ``ref`` (the attackers' own rows).
    Where s_j = 0 both ends are the benign mean.
    """
    mu = ref.mean(0)
    if knowledge == "full":
        w_max, w_min = ref.max(0).values, ref.min(0).values
        # beyond the benign maximum: [w_max, b w_max] if w_max > 0, else [w_max, w_max / b]
        # (the paper's [w_max / b, w_max] written low end first)
        up_low = w_max
        up_high = torch.where(w_max > 0, w_max * b, w_max / b)
        down_low = torch.where(w_min > 0, w_min / b, w_min * b)
        down_high = w_min
    else:
        sigma = coordinate_std(ref)
        up_low, up_high = mu + 3 * sigma, mu + 4 * sigma
        down_low, down_high = mu - 4 * sigma, mu - 3 * sigma
    low = torch.where(s < 0, up_low, torch.where(s > 0, down_low, mu))
    high = torch.where(s < 0, up_high, torch.where(s > 0, down_high, mu))
    return low, high


def sample_intervals(low: torch.Tensor, high: torch.Tensor, count: int,
                     generator: torch.Generator) -> torch.Tensor:
    """(count, d) values drawn uniformly in [low_j, high_j], independently per row and coordinate."""
    u = torch.rand(count, low.shape[0], generator=generator, dtype=low.dtype,
                   device=generator.device).to(low.device)
    return low + u * (high - low)


# -- the behaviour --------------------------------------------------------------------------
@register_behaviour("fang")
@dataclass(frozen=True, kw_only=True)
class Fang(Colluding):
    """Fang et al. (2020): the Krum attack (lambda search against the server's rule) or the
    trimmed-mean/median attack (values beyond the benign extremes), as a colluding adversary."""

    target: str = "krum"
    """Which of the paper's attacks: 'krum' (Sec. 4.2) or 'trmean' (Sec. 4.3, also for median)."""
    b: float = 2.0
    """b > 1: how far beyond the benign extremes the trimmed-mean attack samples (paper: 2)."""
    threshold: float = 1e-5
    """epsilon: the Krum attack stops halving lambda below this (paper: 1e-5)."""
    knowledge: str = "full"
    """'full' (honest updates known) or 'partial' (only the attackers' own genuine updates)."""

    def __post_init__(self) -> None:
        check(self.target in TARGETS, "target", self.target, "'krum' or 'trmean'")
        check(is_num(self.b) and self.b > 1, "b", self.b, "a number > 1")
        check(is_num(self.threshold) and self.threshold > 0, "threshold", self.threshold, "a number > 0")
        check(self.knowledge in KNOWLEDGE, "knowledge", self.knowledge,
              "'full' (honest rows) or 'partial' (own rows)")

    def craft(self, U: torch.Tensor, malicious: torch.Tensor, generator: torch.Generator,
              rule: Rule | None = None) -> torch.Tensor:
        malicious = malicious.to(device=U.device, dtype=torch.bool)
        ref = reference_updates(U, malicious, self.knowledge)
        s = deviation_sign(ref)
        out = U.clone()
        c = int(malicious.sum())
        if self.target == "trmean":
            low, high = trmean_intervals(ref, s, float(self.b), self.knowledge)
            out[malicious] = sample_intervals(low, high, c, generator).to(U.dtype)
            return out
        lam = self.krum_lambda(U, malicious, ref, s, generator, rule)
        out[malicious] = (-lam * s).to(U.dtype)
        return out

    def krum_lambda(self, U: torch.Tensor, malicious: torch.Tensor, ref: torch.Tensor, s: torch.Tensor,
                    generator: torch.Generator, rule: Rule | None) -> float:
        """The paper's search: lambda from the bound, halved until a crafted row is selected."""
        c = int(malicious.sum())
        lam = krum_lambda_bound(ref, c)
        if rule is not None:
            probe = RuleProbe.build(rule, U, malicious, self.knowledge, generator)

            def selected(row: torch.Tensor) -> bool:
                return probe.any_malicious_accepted(probe(row))
        else:
            X0 = simulated_round(U, malicious, self.knowledge, generator).double()
            rows = malicious.nonzero().squeeze(1).tolist()

            def selected(row: torch.Tensor) -> bool:
                X = X0.clone()
                X[malicious] = row
                return krum_selects(X, c) in rows
        while lam >= self.threshold and not selected(-lam * s):
            lam *= 0.5
        return lam

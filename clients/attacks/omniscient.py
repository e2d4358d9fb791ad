"""Colluding omniscient model-poisoning attacks on robust aggregation (ALIE, IPM, Min-Max, Min-Sum).

Each of these simulates a *colluding omniscient adversary*: the attackers
share one malicious update built from the benign updates of the round. They
are :class:`~fedsec.clients.base.Colluding` behaviours: their clients train
honestly, and the server calls :meth:`craft` between receiving the updates and
aggregating them (``U``: (n, d) client-minus-global updates, ``malicious``:
(n,) bool mask of this attack's rows); only the malicious rows are replaced,
``U`` is never modified in place, and the result has U's dtype and device
(the arithmetic runs in float64). Because the attackers' own clients trained
honestly, their rows hold genuine benign updates: with ``knowledge =
"partial"`` an attack builds on those rows only (the partial-knowledge threat
model of Fang et al. 2020 and Shejwalkar & Houmansadr 2021) instead of the
honest clients' rows (``"full"``, the default).

``alie``: Baruch, Baruch, Goldberg. "A Little Is Enough: Circumventing
Defenses For Distributed Learning." NeurIPS 2019, arXiv:1902.06156.
Submit ``mu - z sigma`` (coordinate-wise mean and standard deviation of the
benign updates). With n workers of which m are corrupted, the attackers need
``s = floor(n/2 + 1) - m`` correct workers on their side for a majority; they
pick the largest z for which s of the n - m correct workers still lie farther
from the mean than the malicious value, ``z_max = Phi^{-1}((n - m - s) / (n -
m))`` (Algorithm 3's z-table step with the paper's argument over the correct
workers, as in Blades and FLPoison; see :func:`alie_z`).

``ipm``: Xie, Koyejo, Gupta. "Fall of Empires: Breaking Byzantine-tolerant SGD
by Inner Product Manipulation." UAI 2019, arXiv:1903.03936. Submit
``-epsilon * mean`` of the benign updates.

``minmax`` / ``minsum``: Shejwalkar, Houmansadr. "Manipulating the Byzantine:
Optimizing Model Poisoning Attacks and Defenses for Federated Learning."
NDSS 2021, doi:10.14722/ndss.2021.24498 (AGR-agnostic attacks; reference code
github.com/vrt1shjwlkr/NDSS21-Model-Poisoning). Submit ``nabla_m = mu + gamma
nabla_p`` with perturbation ``nabla_p`` = ``-mu/||mu||`` (``unit_vec``),
``-sigma`` (``std``) or ``-sign(mu)`` (``sign``); ``gamma`` is the largest
value found by the paper's binary search (start ``gamma_init``, tolerance
``tau``) such that, over the benign updates nabla_i,

- Min-Max: ``max_i ||nabla_m - nabla_i|| <= max_{i,j} ||nabla_i - nabla_j||``;
- Min-Sum: ``sum_i ||nabla_m - nabla_i||^2 <= min_i sum_j ||nabla_i - nabla_j||^2``
  (``threshold = "min"``: the malicious update is no more outlying, by its sum
  of squared distances, than *any* benign update, which is what the authors'
  code ``our_attack_score`` bounds by); ``threshold = "max"`` bounds by the
  most outlying benign update instead (fedsec before issue 19, FLPoison).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import torch

from fedsec.clients.attacks._common import check, is_num
from fedsec.clients.base import Colluding, Rule, register_behaviour

KNOWLEDGE = ("full", "partial")


def reference_updates(U: torch.Tensor, malicious: torch.Tensor, knowledge: str) -> torch.Tensor:
    """The benign updates (k, d) float64 the adversary builds on: honest rows, or its own rows."""
    malicious = malicious.to(device=U.device, dtype=torch.bool)
    ref = U[~malicious] if knowledge == "full" else U[malicious]
    if len(ref) == 0:  # every sampled client is an attacker: only its own rows exist
        ref = U[malicious]
    return ref.double()


def coordinate_std(ref: torch.Tensor) -> torch.Tensor:
    """Unbiased coordinate-wise standard deviation (d,); zeros for a single row."""
    return ref.std(0, correction=1) if len(ref) > 1 else torch.zeros_like(ref[0])


def replace_rows(U: torch.Tensor, malicious: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """A copy of U with every malicious row set to ``row`` (d,) (cast to U's dtype)."""
    mask = malicious.to(device=U.device, dtype=torch.bool).unsqueeze(1)
    return torch.where(mask, row.to(U.dtype).unsqueeze(0), U)


def _check_knowledge(b) -> None:
    check(b.knowledge in KNOWLEDGE, "knowledge", b.knowledge, "'full' (honest rows) or 'partial' (own rows)")


# -- ALIE ---------------------------------------------------------------------------------
_Z_CAP = NormalDist().inv_cdf(1 - 1e-6)


def alie_z(n: int, m: int) -> float:
    """z_max of Baruch et al. (2019) for n workers of which m are corrupted.

    ``s = floor(n/2 + 1) - m`` correct workers must side with the attackers;
    z_max is the largest z such that s of the ``n - m`` correct workers lie
    farther from the mean than ``mu - z sigma`` under a normal model:
    ``Phi(z) <= (n - m - s) / (n - m)``. Clamped to [0, Phi^{-1}(1 - 1e-6)]:
    z = 0 (the benign mean) when the attackers are too few for any deviation
    (the quantile is below 1/2), the cap when they need no correct worker
    (s <= 0).
    """
    s = math.floor(n / 2 + 1) - m
    if s <= 0:  # the attackers are a majority on their own
        return _Z_CAP
    q = (n - m - s) / (n - m)
    return NormalDist().inv_cdf(min(max(q, 0.5), 1 - 1e-6))


@register_behaviour("alie")
@dataclass(frozen=True, kw_only=True)
class ALIE(Colluding):
    """A Little Is Enough: mean - z * std of the benign updates (colluding omniscient adversary)."""

    z: float = 0.0
    """z: deviation in standard deviations; 0 = z_max of :func:`alie_z` (n = rows of U, m = malicious rows)."""
    knowledge: str = "full"

    def __post_init__(self) -> None:
        check(is_num(self.z) and self.z >= 0, "z", self.z, "a number >= 0 (0 = paper's z_max)")
        _check_knowledge(self)

    def craft(self, U: torch.Tensor, malicious: torch.Tensor, generator: torch.Generator,
              rule: Rule | None = None) -> torch.Tensor:
        ref = reference_updates(U, malicious, self.knowledge)
        z = self.z or alie_z(len(U), int(malicious.sum()))
        return replace_rows(U, malicious, ref.mean(0) - z * coordinate_std(ref))


# -- IPM ----------------------------------------------------------------------------------
@register_behaviour("ipm")
@dataclass(frozen=True, kw_only=True)
class IPM(Colluding):
    """Inner product manipulation: -epsilon * mean of the benign updates (colluding omniscient adversary)."""

    epsilon: float = 0.1
    """epsilon: the malicious update is -epsilon times the benign mean."""
    knowledge: str = "full"

    def __post_init__(self) -> None:
        check(is_num(self.epsilon) and self.epsilon > 0, "epsilon", self.epsilon, "a number > 0")
        _check_knowledge(self)

    def craft(self, U: torch.Tensor, malicious: torch.Tensor, generator: torch.Generator,
              rule: Rule | None = None) -> torch.Tensor:
        ref = reference_updates(U, malicious, self.knowledge)
        return replace_rows(U, malicious, -float(self.epsilon) * ref.mean(0))


# -- Min-Max / Min-Sum --------------------------------------------------------------------
def perturbation_vector(ref: torch.Tensor, kind: str) -> torch.Tensor:
    """nabla_p (d,) for the benign updates ``ref`` (k, d): -mu/||mu||, -sigma or -sign(mu)."""
    mu = ref.mean(0)
    if kind == "unit_vec":
        return -mu / mu.norm().clamp_min(1e-12)
    if kind == "std":
        return -coordinate_std(ref)
    return -torch.sign(mu)


def search_gamma(ref: torch.Tensor, direction: torch.Tensor, accept: Callable[[torch.Tensor], bool],
                 gamma_init: float, tau: float, max_steps: int) -> float:
    """Largest gamma (binary search of Shejwalkar & Houmansadr) with ``accept(||ref - nabla_m||)``.

    ``nabla_m = mu + gamma * direction``; ``accept`` receives the distances
    (k,) from nabla_m to every benign update. Starts at ``gamma_init`` and
    halves the step until successive candidates differ by at most ``tau``;
    returns 0 when no candidate is accepted.
    """
    mu = ref.mean(0)
    gamma, step, best = float(gamma_init), float(gamma_init), 0.0
    for _ in range(max_steps):
        if abs(best - gamma) <= tau:
            break
        if accept((ref - (mu + gamma * direction)).norm(dim=1)):
            best = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return best


@dataclass(frozen=True, kw_only=True)
class _Shejwalkar(Colluding):
    """mu + gamma * nabla_p with gamma from the binary search of Shejwalkar & Houmansadr."""

    perturbation: str = "std"
    """nabla_p: 'unit_vec' (-mu/||mu||), 'std' (-sigma) or 'sign' (-sign(mu))."""
    gamma_init: float = 10.0
    tau: float = 1e-5
    """Binary-search tolerance on gamma."""
    max_steps: int = 100
    knowledge: str = "full"

    def __post_init__(self) -> None:
        check(self.perturbation in ("unit_vec", "std", "sign"), "perturbation", self.perturbation,
              "'unit_vec', 'std' or 'sign'")
        check(is_num(self.gamma_init) and self.gamma_init > 0, "gamma_init", self.gamma_init, "a number > 0")
        check(is_num(self.tau) and self.tau > 0, "tau", self.tau, "a number > 0")
        check(isinstance(self.max_steps, int) and self.max_steps >= 1, "max_steps", self.max_steps,
              "an integer >= 1")
        _check_knowledge(self)

    def acceptance(self, pairwise: torch.Tensor) -> Callable[[torch.Tensor], bool]:
        """The test on distances to the malicious update, given benign pairwise distances (k, k)."""
        raise NotImplementedError

    def craft(self, U: torch.Tensor, malicious: torch.Tensor, generator: torch.Generator,
              rule: Rule | None = None) -> torch.Tensor:
        ref = reference_updates(U, malicious, self.knowledge)
        direction = perturbation_vector(ref, self.perturbation)
        accept = self.acceptance(torch.cdist(ref, ref))
        gamma = search_gamma(ref, direction, accept, self.gamma_init, self.tau, self.max_steps)
        return replace_rows(U, malicious, ref.mean(0) + gamma * direction)


@register_behaviour("minmax")
@dataclass(frozen=True, kw_only=True)
class MinMax(_Shejwalkar):
    """Min-Max: max distance to benign updates <= max benign pairwise distance
    (simulates a colluding omniscient adversary)."""

    def acceptance(self, pairwise: torch.Tensor) -> Callable[[torch.Tensor], bool]:
        bound = pairwise.max()
        return lambda d: bool(d.max() <= bound)


def minsum_bound(pairwise: torch.Tensor, threshold: str) -> torch.Tensor:
    """Min-Sum's bound: min (or max) over benign i of sum_j ||nabla_i - nabla_j||^2 (a scalar)."""
    sums = (pairwise**2).sum(1)
    return sums.min() if threshold == "min" else sums.max()


@register_behaviour("minsum")
@dataclass(frozen=True, kw_only=True)
class MinSum(_Shejwalkar):
    """Min-Sum: sum of squared distances to benign updates <= the smallest benign one
    (``threshold = "max"``: the largest) (simulates a colluding omniscient adversary)."""

    threshold: str = "min"
    """Bound on sum_i ||nabla_m - nabla_i||^2: 'min' (authors' code) or 'max' over benign i of
    sum_j ||nabla_i - nabla_j||^2."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.threshold in ("min", "max"), "threshold", self.threshold, "'min' or 'max'")

    def acceptance(self, pairwise: torch.Tensor) -> Callable[[torch.Tensor], bool]:
        bound = minsum_bound(pairwise, self.threshold)
        return lambda d: bool((d**2).sum() <= bound)

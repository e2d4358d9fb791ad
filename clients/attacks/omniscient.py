"""Omniscient model-poisoning attacks on robust aggregation (ALIE, IPM, MinMax, MinSum).

Each of these simulates a *colluding omniscient adversary*: the attackers
share one malicious update built from the benign updates of the round. The
server calls :meth:`server_stage` between receiving the updates and
aggregating them (``U``: (n, d) client-minus-global updates, ``attackers``:
(n,) bool mask of this behaviour's rows); only the attackers' rows are
replaced, ``U`` is never modified in place. The attackers' own clients train
honestly, so their rows hold genuine benign updates; with
``omniscient = false`` an attack uses only those rows (the paper's
partial-knowledge variant) instead of the honest clients' rows.

``alie``: Baruch, Baruch, Goldberg. "A Little Is Enough: Circumventing
Defenses For Distributed Learning." NeurIPS 2019, arXiv:1902.06156.
Submit ``mu - z sigma`` (coordinate-wise mean and standard deviation of the
benign updates) with ``z_max`` from the paper: ``s = floor(n/2 + 1) - f``,
``z_max = Phi^{-1}((n - s) / n)`` (n clients, f attackers).

``ipm``: Xie, Koyejo, Gupta. "Fall of Empires: Breaking Byzantine-tolerant SGD
by Inner Product Manipulation." UAI 2019, arXiv:1903.03936. Submit
``-epsilon * mean`` of the benign updates.

``minmax`` / ``minsum``: Shejwalkar, Houmansadr. "Manipulating the Byzantine:
Optimizing Model Poisoning Attacks and Defenses for Federated Learning."
NDSS 2021, doi:10.14722/ndss.2021.24498 (AGR-agnostic attacks). Submit
``nabla_m = mu + gamma nabla_p`` with perturbation ``nabla_p`` = ``-mu/||mu||``
(``unit_vec``), ``-sigma`` (``std``) or ``-sign(mu)`` (``sign``); ``gamma`` is
the largest value found by the paper's binary search (start ``gamma_init``,
tolerance ``tau``) such that MinMax: ``max_i ||nabla_m - nabla_i|| <=
max_{i,j} ||nabla_i - nabla_j||``; MinSum: ``sum_i ||nabla_m - nabla_i||^2
<= max_i sum_j ||nabla_i - nabla_j||^2`` over the benign updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch

from fedsec.clients.attacks._common import check, is_num
from fedsec.clients.base import Behaviour, register_behaviour


def _reference(U: torch.Tensor, attackers: torch.Tensor, omniscient: bool) -> torch.Tensor:
    """The benign updates the adversary builds on: honest rows, or its own rows."""
    attackers = attackers.to(device=U.device, dtype=torch.bool)
    ref = U[~attackers] if omniscient else U[attackers]
    if len(ref) == 0:  # every sampled client is an attacker: only its own rows exist
        ref = U[attackers]
    return ref.double()


def _std(ref: torch.Tensor) -> torch.Tensor:
    return ref.std(0, correction=1) if len(ref) > 1 else torch.zeros_like(ref[0])


def _replace(U: torch.Tensor, attackers: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    mask = attackers.to(device=U.device, dtype=torch.bool).unsqueeze(1)
    return torch.where(mask, row.to(U.dtype).unsqueeze(0), U)


def _check_omniscient(p) -> None:
    check(isinstance(p.omniscient, bool), "omniscient", p.omniscient, "true or false")


@dataclass(frozen=True, kw_only=True)
class ALIEParams:
    z: float = 0.0
    """z: deviation in standard deviations; 0 = z_max from the paper's formula."""
    omniscient: bool = True

    def __post_init__(self) -> None:
        check(is_num(self.z) and self.z >= 0, "z", self.z, "a number >= 0 (0 = paper's z_max)")
        _check_omniscient(self)


def alie_z(n: int, f: int) -> float:
    """z_max of Baruch et al.: s = floor(n/2 + 1) - f, z = Phi^{-1}((n - s) / n)."""
    s = math.floor(n / 2 + 1) - f
    q = min(max((n - s) / n, 0.5), 1 - 1e-6)
    return NormalDist().inv_cdf(q)


@register_behaviour("alie")
class ALIE(Behaviour):
    """A Little Is Enough: mean - z * std of the benign updates (colluding omniscient adversary)."""

    Params = ALIEParams
    omniscient = True

    def server_stage(self, U, attackers, generator):
        ref = _reference(U, attackers, self.params.omniscient)
        z = self.params.z or alie_z(len(U), int(attackers.sum()))
        return _replace(U, attackers, ref.mean(0) - z * _std(ref))


@dataclass(frozen=True, kw_only=True)
class IPMParams:
    epsilon: float = 0.1
    """epsilon: the malicious update is -epsilon times the benign mean."""
    omniscient: bool = True

    def __post_init__(self) -> None:
        check(is_num(self.epsilon) and self.epsilon > 0, "epsilon", self.epsilon, "a number > 0")
        _check_omniscient(self)


@register_behaviour("ipm")
class IPM(Behaviour):
    """Inner product manipulation: -epsilon * mean of the benign updates (colluding omniscient adversary)."""

    Params = IPMParams
    omniscient = True

    def server_stage(self, U, attackers, generator):
        ref = _reference(U, attackers, self.params.omniscient)
        return _replace(U, attackers, -float(self.params.epsilon) * ref.mean(0))


@dataclass(frozen=True, kw_only=True)
class MinMaxParams:
    perturbation: str = "std"
    """nabla_p: 'unit_vec' (-mu/||mu||), 'std' (-sigma) or 'sign' (-sign(mu))."""
    gamma_init: float = 10.0
    tau: float = 1e-5
    """Binary-search tolerance on gamma."""
    max_steps: int = 100
    omniscient: bool = True

    def __post_init__(self) -> None:
        check(self.perturbation in ("unit_vec", "std", "sign"), "perturbation", self.perturbation,
              "'unit_vec', 'std' or 'sign'")
        check(is_num(self.gamma_init) and self.gamma_init > 0, "gamma_init", self.gamma_init, "a number > 0")
        check(is_num(self.tau) and self.tau > 0, "tau", self.tau, "a number > 0")
        check(isinstance(self.max_steps, int) and self.max_steps >= 1, "max_steps", self.max_steps,
              "an integer >= 1")
        _check_omniscient(self)


class _Shejwalkar(Behaviour):
    """mu + gamma * nabla_p with gamma from the binary search of Shejwalkar & Houmansadr."""

    Params = MinMaxParams
    omniscient = True

    def ok(self, dist_to_mal: torch.Tensor, pairwise: torch.Tensor) -> bool:
        raise NotImplementedError

    def perturbation(self, ref: torch.Tensor) -> torch.Tensor:
        mu = ref.mean(0)
        kind = self.params.perturbation
        if kind == "unit_vec":
            return -mu / mu.norm().clamp_min(1e-12)
        if kind == "std":
            return -_std(ref)
        return -torch.sign(mu)

    def search_gamma(self, ref: torch.Tensor, direction: torch.Tensor) -> float:
        p = self.params
        mu = ref.mean(0)
        pairwise = torch.cdist(ref, ref)
        gamma, step, best = float(p.gamma_init), float(p.gamma_init), 0.0
        for _ in range(p.max_steps):
            if abs(best - gamma) <= p.tau:
                break
            mal = mu + gamma * direction
            if self.ok((ref - mal).norm(dim=1), pairwise):
                best = gamma
                gamma += step / 2
            else:
                gamma -= step / 2
            step /= 2
        return best

    def server_stage(self, U, attackers, generator):
        ref = _reference(U, attackers, self.params.omniscient)
        direction = self.perturbation(ref)
        gamma = self.search_gamma(ref, direction)
        return _replace(U, attackers, ref.mean(0) + gamma * direction)


@register_behaviour("minmax")
class MinMax(_Shejwalkar):
    """Min-Max: max distance to benign updates <= max benign pairwise distance
    (simulates a colluding omniscient adversary)."""

    def ok(self, dist_to_mal, pairwise):
        return bool(dist_to_mal.max() <= pairwise.max())


@register_behaviour("minsum")
class MinSum(_Shejwalkar):
    """Min-Sum: sum of squared distances to benign updates <= the largest benign one
    (simulates a colluding omniscient adversary)."""

    def ok(self, dist_to_mal, pairwise):
        return bool((dist_to_mal**2).sum() <= (pairwise**2).sum(1).max())

"""AGR-tailored model poisoning: the perturbation scale optimised against the server's rule.

Shejwalkar, Houmansadr. "Manipulating the Byzantine: Optimizing Model
Poisoning Attacks and Defenses for Federated Learning." NDSS 2021,
doi:10.14722/ndss.2021.24498, Sec. IV-B (AGR-tailored attacks); reference
code github.com/vrt1shjwlkr/NDSS21-Model-Poisoning (``our_attack_trmean``,
``our_attack_median``, ``our_attack_mkrum`` in the release notebooks).

Every attacker submits ``nabla_m = mu + gamma * nabla_p`` where mu is the
mean of the benign updates the adversary knows (``knowledge``), and the
perturbation ``nabla_p`` is ``-mu/||mu||`` (``unit_vec``), ``-sigma``
(``std``) or ``-sign(mu)`` (``sign``), as for Min-Max/Min-Sum. The paper's
objective is ``argmax_gamma ||f_agr(nabla_m, benign) - mu||``, with, for
selection rules, the constraint that the malicious updates are selected. The
authors solve it by the same binary search as Min-Max (start ``gamma_init``,
halve the step until successive candidates differ by at most ``tau``),
evaluating the actual rule at every candidate; a candidate is a "success"
(gamma grows) under ``objective``:

- ``"selection"`` (their Krum / Multi-Krum / Bulyan notebooks): the
  malicious rows are selected: all of them are in the rule's ``accepted``,
  or, for a rule that keeps fewer than c clients (Krum keeps one), every
  client it keeps is malicious (the crafted rows are identical, so keeping
  one of them is selecting the malicious update);
- ``"deviation"`` (their trimmed-mean / median notebooks): the aggregate
  moved farther from mu than at the previous candidate
  (``prev_loss < loss``);
- ``"auto"`` (default, for any rule): the malicious rows are selected (as
  above) and the aggregate moved farther from mu than at the best success so far. On a
  selection rule this is the selection test (a larger accepted gamma always
  deviates more); on a rule that accepts everyone it is a monotone ascent of
  the deviation, which stops at the smallest gamma reaching its plateau.

The rule is the one the federation passes to :meth:`craft`; how the round is
simulated (partial knowledge, randomised rules, FLTrust's reference update) is
in :mod:`fedsec.clients.attacks._adaptive`. The attack is adaptive by
definition: without a rule, ``craft`` raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedsec.clients.attacks._adaptive import RuleProbe
from fedsec.clients.attacks._common import check, is_int, is_num
from fedsec.clients.attacks.omniscient import KNOWLEDGE, perturbation_vector, reference_updates, replace_rows
from fedsec.clients.base import Colluding, Rule, register_behaviour

OBJECTIVES = ("auto", "selection", "deviation")


def binary_search(success: Callable[[float], bool], gamma_init: float, tau: float, max_steps: int) -> float:
    """The authors' search: the last successful gamma (0 when none succeeded).

    Starts at ``gamma_init`` with step ``gamma_init``; after each candidate
    moves up (success) or down by half the step and halves the step; stops
    once the candidate is within ``tau`` of the last success, or after
    ``max_steps`` candidates.
    """
    gamma, step, best = float(gamma_init), float(gamma_init), 0.0
    for _ in range(max_steps):
        if abs(best - gamma) <= tau:
            break
        if success(gamma):
            best = gamma
            gamma += step / 2
        else:
            gamma -= step / 2
        step /= 2
    return best


def success_test(objective: str, probe: RuleProbe, mu: torch.Tensor, direction: torch.Tensor
                 ) -> Callable[[float], bool]:
    """gamma -> bool under ``objective`` (see the module docstring); keeps its own memory."""
    memory = {"prev": -1.0, "best": float("-inf")}

    def run(gamma: float):
        out = probe(mu + gamma * direction)
        return out, float((out.vector.to(mu) - mu).norm())

    def test(gamma: float) -> bool:
        out, dev = run(gamma)
        if objective == "selection":
            return probe.malicious_selected(out)
        if objective == "deviation":
            ok, memory["prev"] = memory["prev"] < dev, dev
            return ok
        ok = probe.malicious_selected(out) and dev > memory["best"]
        if ok:
            memory["best"] = dev
        return ok

    return test


@register_behaviour("agr_tailored")
@dataclass(frozen=True, kw_only=True)
class AGRTailored(Colluding):
    """AGR-tailored attack (Shejwalkar & Houmansadr 2021): mu + gamma nabla_p with gamma
    searched against the server's actual rule (colluding adversary; needs the rule)."""

    needs_rule: ClassVar[bool] = True
    """craft raises without the server's rule (the conformance checks read this)."""

    perturbation: str = "std"
    """nabla_p: 'unit_vec' (-mu/||mu||), 'std' (-sigma) or 'sign' (-sign(mu))."""
    gamma_init: float = 10.0
    """Initial gamma and step of the search (authors: 10 for trimmed mean/median, 3 for Multi-Krum)."""
    tau: float = 1e-5
    """Search tolerance on gamma."""
    max_steps: int = 100
    objective: str = "auto"
    """When a candidate gamma succeeds: 'auto', 'selection' or 'deviation' (module docstring)."""
    knowledge: str = "full"
    """'full' (honest updates known) or 'partial' (only the attackers' own genuine updates)."""

    def __post_init__(self) -> None:
        check(self.perturbation in ("unit_vec", "std", "sign"), "perturbation", self.perturbation,
              "'unit_vec', 'std' or 'sign'")
        check(is_num(self.gamma_init) and self.gamma_init > 0, "gamma_init", self.gamma_init, "a number > 0")
        check(is_num(self.tau) and self.tau > 0, "tau", self.tau, "a number > 0")
        check(is_int(self.max_steps) and self.max_steps >= 1, "max_steps", self.max_steps, "an integer >= 1")
        check(self.objective in OBJECTIVES, "objective", self.objective, "'auto', 'selection' or 'deviation'")
        check(self.knowledge in KNOWLEDGE, "knowledge", self.knowledge,
              "'full' (honest rows) or 'partial' (own rows)")

    def gamma(self, U: torch.Tensor, malicious: torch.Tensor, generator: torch.Generator, rule: Rule
              ) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(gamma, mu, nabla_p) for this round: the search's result and what it scales."""
        malicious = malicious.to(device=U.device, dtype=torch.bool)
        ref = reference_updates(U, malicious, self.knowledge)
        mu, direction = ref.mean(0), perturbation_vector(ref, self.perturbation)
        probe = RuleProbe.build(rule, U, malicious, self.knowledge, generator)
        test = success_test(self.objective, probe, mu, direction)
        return binary_search(test, self.gamma_init, self.tau, self.max_steps), mu, direction

    def craft(self, U: torch.Tensor, malicious: torch.Tensor, generator: torch.Generator,
              rule: Rule | None = None) -> torch.Tensor:
        if rule is None:
            raise ValueError("agr_tailored: rule is None; this attack optimises against the server's "
                             "aggregation rule, so craft needs rule= (the federation passes its own)")
        g, mu, direction = self.gamma(U, malicious, generator, rule)
        return replace_rows(U, malicious, mu + g * direction)

"""What the adaptive attacks (``fang``, ``agr_tailored``) share: running the server's rule
on a candidate round the way the adversary can simulate it.

The federation passes its aggregation rule to :meth:`Colluding.craft`; an
adaptive attack evaluates it on copies of the round's update matrix in which
the malicious rows hold a candidate update. Three choices are made here, once:

* **Which honest rows.** With ``knowledge = "full"`` the adversary sees the
  honest updates of the round and the probe uses them. With ``"partial"`` it
  knows only its own clients' genuine (pre-attack) updates, so the honest
  rows it cannot see are stand-ins drawn from a normal distribution fitted to
  its own rows (coordinate-wise mean and standard deviation), the model of
  the benign updates that Fang et al. use for their partial-knowledge attacks.
  The matrix keeps the round's size n, so a rule configured for n clients
  (Krum's ``f``) can be run on it.
* **Randomness.** Randomised rules (DnC's coordinate sampling, bucketing's
  shuffle) are run with a generator re-seeded to the same value for every
  candidate (one seed drawn from the attack's generator), so the search
  compares candidates under the same draw (common random numbers).
* **Rules that need the server's own update** (FLTrust's root-set update g_0,
  ``needs_reference``): the adversary does not hold the server's root set, so
  it stands in the benign mean for g_0 (its best estimate of the direction
  the server's clean update points in).

Weights: the probe calls ``rule(U, weights=None, ...)`` (the adversary does
not know the example counts the server will weigh by).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.clients.attacks.omniscient import coordinate_std, reference_updates
from fedsec.clients.base import Rule


def draw_seed(generator: torch.Generator) -> int:
    """One integer seed drawn from ``generator`` (on the generator's device)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))


def simulated_round(U: torch.Tensor, malicious: torch.Tensor, knowledge: str,
                    generator: torch.Generator) -> torch.Tensor:
    """The (n, d) matrix the adversary runs the rule on (malicious rows still to be filled).

    ``"full"``: U itself. ``"partial"``: the honest rows replaced by draws from
    N(mu_own, diag(sigma_own^2)) fitted to the malicious rows (their genuine
    updates); a single own row gives sigma = 0 (every stand-in equals it).
    """
    if knowledge == "full":
        return U
    own = U[malicious].double()
    mu, sigma = own.mean(0), coordinate_std(own)
    honest = int((~malicious).sum())
    noise = torch.randn(honest, U.shape[1], generator=generator, dtype=torch.float64,
                        device=generator.device).to(U.device)
    X = U.clone()
    X[~malicious] = (mu + sigma * noise).to(U.dtype)
    return X


@dataclass(frozen=True)
class RuleProbe:
    """``probe(row)``: the rule's result on the simulated round with every malicious row = ``row``.

    ``base`` (n, d) in U's dtype and device; ``malicious`` (n,) bool; ``seed``
    re-seeds the rule's generator for every call; ``reference`` (d,) is the
    stand-in for the server's own update, given to rules with
    ``needs_reference``.
    """

    rule: Rule
    base: torch.Tensor
    malicious: torch.Tensor
    seed: int
    generator_device: torch.device
    reference: torch.Tensor | None

    @classmethod
    def build(cls, rule: Rule, U: torch.Tensor, malicious: torch.Tensor, knowledge: str,
              generator: torch.Generator) -> RuleProbe:
        malicious = malicious.to(device=U.device, dtype=torch.bool)
        base = simulated_round(U, malicious, knowledge, generator)
        ref = reference_updates(U, malicious, knowledge)
        needs = bool(getattr(rule, "needs_reference", False))
        reference = ref.mean(0).to(U.dtype) if needs else None
        return cls(rule, base, malicious, draw_seed(generator), generator.device, reference)

    def __call__(self, rows: torch.Tensor):
        """Run the rule with the malicious rows set to ``rows`` ((d,) for all, or (c, d))."""
        X = self.base.clone()
        X[self.malicious] = rows.to(dtype=X.dtype, device=X.device)
        g = torch.Generator(device=self.generator_device).manual_seed(self.seed)
        kwargs = {"generator": g}
        if self.reference is not None:
            kwargs["reference"] = self.reference
        return self.rule(X, weights=None, **kwargs)

    def any_malicious_accepted(self, out) -> bool:
        return bool(out.accepted.to(self.base.device)[self.malicious].any())

    def malicious_selected(self, out) -> bool:
        """The malicious rows fill the rule's selection as far as they can: all c of them are
        accepted, or, for a rule that keeps fewer than c clients (Krum keeps one), every
        client it keeps is malicious."""
        accepted = out.accepted.to(self.base.device)
        mal = int(accepted[self.malicious].sum())
        return mal == min(int(self.malicious.sum()), int(accepted.sum())) and mal > 0

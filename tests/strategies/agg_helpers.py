import torch

# kwargs for an n=12 setting with f=2 / eps=0.2
PARAMS = {
    "krum": {"f": 2},
    "multikrum": {"f": 2},
    "bulyan": {"f": 2},
    "trimmed_mean": {"f": 2},
    "filtering": {"eps": 0.2},
    "spectral": {"eps": 0.2},
    "flame": {"lam": 0.001},
    "norm_clip": {"M": 3.0, "sigma": 0.01},
    "centered_clip": {"tau": 3.0},
    "dnc": {"f": 2},
    "mda": {"f": 2},
    "meamed": {"f": 2},
    "sever": {"fraction": 0.2, "iterations": 2},
}
PRE_PARAMS = {"nnm": {"f": 2}, "arc": {"f": 2}, "bucketing": {"s": 2}}


def default_reference(U: torch.Tensor) -> torch.Tensor:
    """A stand-in for the server's root-set update: the coordinate-wise median of the
    finite rows (zeros if none), so it is the same for U, U with an extra NaN row, and
    any row permutation of U."""
    finite = torch.isfinite(U).all(dim=1)
    if not bool(finite.any()):
        return torch.zeros(U.shape[1], dtype=torch.float32)
    return torch.quantile(U[finite].double(), 0.5, dim=0).float()


class WithReference:
    """Calls a rule that needs_reference with ``default_reference(U)`` unless one is given."""

    def __init__(self, rule):
        self.rule = rule

    def __call__(self, U, weights=None, *, generator=None, reference=None):
        ref = default_reference(U) if reference is None else reference
        return self.rule(U, weights=weights, generator=generator, reference=ref)

    def __getattr__(self, item):
        return getattr(self.rule, item)


def with_reference(rule):
    return WithReference(rule) if getattr(rule, "needs_reference", False) else rule


def make(name: str, **over):
    from fedsec.strategies import get_aggregator

    return with_reference(get_aggregator(name, **{**PARAMS.get(name, {}), **over}))


def make_pre(name: str, **over):
    from fedsec.strategies import get_pre_aggregator

    return get_pre_aggregator(name, **{**PRE_PARAMS.get(name, {}), **over})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=gen(seed))

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
}


def make(name: str, **over):
    from fedsec.strategies import get_aggregator

    return get_aggregator(name, **{**PARAMS.get(name, {}), **over})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=gen(seed))

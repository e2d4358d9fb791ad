"""Randomness derived from (seed, purpose, round, partition id), never from process state.

Every random draw in a run comes from a ``torch.Generator`` made here, so the
same scenario and seed give the same global model whichever engine schedules
the clients and in whatever order they finish.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed that depends only on ``seed`` and the ordered ``keys``."""
    text = ":".join([str(int(seed)), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, *keys: object, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


@contextlib.contextmanager
def scoped_seed(seed: int, *keys: object) -> Iterator[None]:
    """Seed torch's default CPU RNG for a block and restore it afterwards.

    For code that draws from the global RNG and takes no generator (nn.Module
    parameter init, dropout in user models): the caller's RNG state is left as
    it was, so library code never leaks a manual_seed.
    """
    # default_generator, not torch.manual_seed: the latter also queues a lazy CUDA
    # seeding that captures a stack trace per call (~5 ms deep inside Flower) and
    # would leak past fork_rng(devices=[]).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(derive_seed(seed, *keys))
        yield


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)

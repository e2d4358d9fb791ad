"""The owner's secret trigger and the panel of control triggers it is ranked against.

Every watermark trigger is a :class:`fedsec.data.triggers.Trigger` (the one
stamping rule of the project, ``x' = (1 - m) x + m p``); this module only
chooses masks and patterns:

``keyed_patch`` (the default)
    An ``s`` x ``s`` square of i.i.d. Bernoulli(1/2) black/white cells at a
    uniformly drawn top-left cell. Pattern and position are the owner's key,
    drawn from a generator seeded by the owner's seed.
``patch``
    The paper's fixed trojan square (checkerboard with a bright frame) on the
    bottom-right corner. Public and fixed: not a draw from the panel's
    distribution (see :mod:`fedsec.plugins.watermark.verify`).
``blend``
    ``(1 - alpha) x + alpha p`` with ``p`` a uniform-noise image drawn from the key.

A control panel is ``K`` further draws from the distribution the key was drawn
from (same kind, size, alpha), all distinct from each other and from the
secret: sampling without replacement, so under "the suspect never saw the key"
the secret and the controls are exchangeable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch

from fedsec.data.triggers import Trigger
from fedsec.seeding import generator
from fedsec.validation import invalid

KINDS = ("keyed_patch", "patch", "blend")

Draw = Callable[[torch.Generator], Trigger]


def trojan_square(size: int, channels: int) -> torch.Tensor:
    """A fixed (C, size, size) square pattern: a checkerboard with a bright frame.

    Deterministic, high contrast in every channel (trojan-square style).
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    i = torch.arange(size)
    pat = ((i[:, None] + i[None, :]) % 2 == 0).float()
    pat[0, :] = pat[-1, :] = pat[:, 0] = pat[:, -1] = 1.0
    return pat.expand(channels, size, size).clone()


def blend_pattern(in_shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """The key's uniform-noise image (C, H, W) in [0, 1] to blend in (seeded)."""
    g = generator(seed, "watermark", "blend-pattern")
    return torch.rand(tuple(int(v) for v in in_shape), generator=g)


def square_trigger(cells: torch.Tensor, row: int, col: int, in_shape: Sequence[int]) -> Trigger:
    """A ``kind="pattern"`` trigger writing ``cells`` (s, s) or (C, s, s) at (row, col)."""
    c, h, w = (int(v) for v in in_shape)
    s = cells.shape[-1]
    if cells.shape[-2] != s or cells.ndim not in (2, 3):
        raise ValueError(f"cells: expected (s, s) or (C, s, s), got {tuple(cells.shape)}")
    if row < 0 or col < 0 or row + s > h or col + s > w:
        raise ValueError(f"location: a {s}-px square at ({row}, {col}) leaves the {h}x{w} image")
    mask = torch.zeros(c, h, w)
    pattern = torch.zeros(c, h, w)
    mask[:, row : row + s, col : col + s] = 1.0
    pattern[:, row : row + s, col : col + s] = cells.to(torch.float32).expand(c, s, s)
    return Trigger(kind="pattern", mask=mask, pattern=pattern)


def trojan_trigger(size: int, in_shape: Sequence[int]) -> Trigger:
    """The paper's trojan square on the bottom-right corner (same pixels as before the refactor)."""
    c, h, w = (int(v) for v in in_shape)
    return square_trigger(trojan_square(size, c), h - size, w - size, in_shape)


def draw_keyed_patch(size: int, in_shape: Sequence[int], g: torch.Generator) -> Trigger:
    """One keyed patch: Bernoulli(1/2) cells in {0, 1}, uniform top-left cell."""
    _, h, w = (int(v) for v in in_shape)
    row = int(torch.randint(0, h - size + 1, (1,), generator=g))
    col = int(torch.randint(0, w - size + 1, (1,), generator=g))
    cells = (torch.rand(size, size, generator=g) < 0.5).to(torch.float32)
    return square_trigger(cells, row, col, in_shape)


def draw_blend(alpha: float, in_shape: Sequence[int], g: torch.Generator) -> Trigger:
    """One blend trigger with a fresh uniform-noise pattern (the distribution of the blend key)."""
    return Trigger(kind="blend", alpha=float(alpha),
                   pattern=torch.rand(tuple(int(v) for v in in_shape), generator=g))


def same_trigger(a: Trigger, b: Trigger, in_shape: Sequence[int]) -> bool:
    """Whether two triggers write the same pixels with the same values on images of ``in_shape``."""
    shape = tuple(int(v) for v in in_shape)
    (ma, pa), (mb, pb) = a.mask_and_pattern(shape), b.mask_and_pattern(shape)  # type: ignore[arg-type]
    return torch.equal(ma, mb) and torch.equal(ma * pa, mb * pb)


def control_panel(secret: Trigger, draw: Draw, k: int, g: torch.Generator,
                  in_shape: Sequence[int], max_tries: int | None = None) -> list[Trigger]:
    """``k`` distinct draws, none equal to ``secret`` (sampling without replacement).

    ``max_tries`` (default ``100 k``) bounds the draws: a trigger space smaller
    than the panel is an error naming ``panel_size``, not an endless loop.
    """
    if k < 1:
        raise invalid("panel_size", k, "an integer >= 1")
    limit = 100 * k if max_tries is None else max_tries
    shape = tuple(int(v) for v in in_shape)
    seen = {_fingerprint(secret, shape)}
    out: list[Trigger] = []
    for _ in range(limit):
        t = draw(g)
        fp = _fingerprint(t, shape)
        if fp not in seen:
            seen.add(fp)
            out.append(t)
            if len(out) == k:
                return out
    raise invalid("panel_size", k, f"at most the number of distinct triggers of this kind and size "
                  f"({len(out)} found in {limit} draws)")


def commitment(trigger: Trigger, target: int, in_shape: Sequence[int],
               reference: dict[str, torch.Tensor] | None = None) -> str:
    """SHA-256 (hex) of the secret's mask, pattern, target class and the reference model's weights.

    Published (timestamped) when the watermark is injected and opened in a
    dispute, it shows the key and the un-watermarked reference the test
    subtracts existed before the suspect was examined, so the accuser could
    not have picked them to fit the suspect (Adi et al. 2018; Liu et al.,
    "False Claims against Model Ownership Resolution", 2024).
    """
    h = hashlib.sha256(_fingerprint(trigger, tuple(int(v) for v in in_shape)))
    h.update(int(target).to_bytes(8, "little"))
    for name in sorted(reference or {}):
        h.update(name.encode())
        h.update(reference[name].detach().cpu().contiguous().numpy().tobytes())  # type: ignore[index]
    return h.hexdigest()


def _fingerprint(t: Trigger, shape: tuple[int, ...]) -> bytes:
    mask, pattern = t.mask_and_pattern(shape)  # type: ignore[arg-type]
    return mask.numpy().tobytes() + (mask * pattern).numpy().tobytes()


__all__ = [
    "KINDS", "trojan_square", "blend_pattern", "square_trigger", "trojan_trigger", "draw_keyed_patch",
    "draw_blend", "same_trigger", "control_panel", "commitment",
]

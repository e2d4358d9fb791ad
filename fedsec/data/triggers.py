"""Backdoor triggers: what an attacker stamps on an input, as one frozen value.

Every trigger resolves, for an image shape ``(C, H, W)``, to a mask ``m`` in
[0, 1] and a pattern ``p`` and applies as ``x' = (1 - m) * x + m * p`` on a
copy (never in place). Three kinds:

``patch``
    A ``size`` x ``size`` square (``shape="square"``) or plus sign
    (``shape="cross"``) of intensity ``value`` at a corner / the centre
    (``location``) or at an explicit ``(row, col)`` of its top-left cell,
    ``margin`` pixels from the border (BadNets, Gu et al. 2017).
``blend``
    Alpha-blend with a pattern (Chen et al. 2017, arXiv:1712.05526): a fixed
    uniform-random pattern drawn from ``seed`` for the image's shape, or a
    given ``pattern`` array; ``alpha`` is the blend weight.
``pattern``
    An arbitrary user ``mask`` (H, W) or (C, H, W) and ``pattern`` (same, or
    broadcastable) array.

:meth:`Trigger.split` cuts a global trigger into ``k`` local pieces for the
distributed backdoor attack (DBA, Xie et al. ICLR 2020): the support pixels of
the trigger are ordered row-major and cut into ``k`` contiguous groups, so the
pieces are pairwise disjoint and their union is the global trigger (a square
patch splits into horizontal bars, as in the DBA paper). A piece is the same
trigger with ``piece`` recording its ``(index, k)`` path, so it stays
shape-agnostic and works on 8x8, 28x28 and 32x32 inputs alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

KINDS = ("patch", "blend", "pattern")
SHAPES = ("square", "cross")
LOCATIONS = ("top_left", "top_right", "bottom_left", "bottom_right", "center")


def _bad(name: str, value: Any, expected: str) -> ValueError:
    from fedsec.validation import invalid

    return invalid(name, value, expected)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v


def _as_array(name: str, value: Any) -> torch.Tensor | None:
    if value is None:
        return None
    try:
        t = torch.as_tensor(np.asarray(value, dtype=np.float32))
    except (TypeError, ValueError):
        raise _bad(name, value, "a numeric array") from None
    if t.ndim not in (2, 3):
        raise _bad(f"{name}.shape", tuple(t.shape), "(H, W) or (C, H, W)")
    if not bool(torch.isfinite(t).all()) or float(t.min()) < 0 or float(t.max()) > 1:
        raise _bad(name, "array", "values in [0, 1]")
    return t


@dataclass(frozen=True, kw_only=True)
class Trigger:
    """A backdoor trigger; see the module docstring for the kinds."""

    kind: str = "patch"
    size: int = 3
    """patch: side of the square / bounding box of the cross, in pixels."""
    shape: str = "square"
    location: str | tuple[int, int] = "bottom_right"
    """patch: a corner name, ``center``, or ``(row, col)`` of the top-left cell."""
    margin: int = 0
    """patch: distance in pixels from the image border (named locations)."""
    value: float = 1.0
    """patch: intensity written on every channel."""
    alpha: float = 0.2
    """blend: weight of the pattern in ``(1 - alpha) x + alpha p``."""
    seed: int = 0
    """blend: seed of the fixed uniform random pattern (when ``pattern`` is not given)."""
    pattern: Any = field(default=None, compare=False, repr=False)
    mask: Any = field(default=None, compare=False, repr=False)
    piece: tuple[tuple[int, int], ...] = ()
    """Path of (index, k) splits this trigger is a piece of; () = the whole trigger."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise _bad("kind", self.kind, f"one of {KINDS}")
        if self.shape not in SHAPES:
            raise _bad("shape", self.shape, f"one of {SHAPES}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise _bad("size", self.size, "an integer >= 1")
        if isinstance(self.location, list):
            object.__setattr__(self, "location", tuple(self.location))
        loc = self.location
        if isinstance(loc, tuple):
            if len(loc) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                         for v in loc):
                raise _bad("location", loc, "(row, col) of non-negative integers")
        elif loc not in LOCATIONS:
            raise _bad("location", loc, f"one of {LOCATIONS} or (row, col)")
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise _bad("margin", self.margin, "an integer >= 0")
        if not (_is_num(self.value) and 0.0 <= float(self.value) <= 1.0):
            raise _bad("value", self.value, "a number in [0, 1]")
        if not (_is_num(self.alpha) and 0.0 < float(self.alpha) <= 1.0):
            raise _bad("alpha", self.alpha, "a number in (0, 1]")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise _bad("seed", self.seed, "an integer >= 0")
        object.__setattr__(self, "pattern", _as_array("pattern", self.pattern))
        object.__setattr__(self, "mask", _as_array("mask", self.mask))
        if self.kind == "pattern" and (self.mask is None or self.pattern is None):
            raise _bad("mask", self.mask if self.mask is None else "array",
                       "both mask and pattern arrays for kind='pattern'")
        piece = tuple(tuple(p) for p in self.piece)
        for i, k in piece:
            if not (isinstance(k, int) and k >= 1 and isinstance(i, int) and 0 <= i < k):
                raise _bad("piece", self.piece, "(index, k) pairs with 0 <= index < k")
        object.__setattr__(self, "piece", piece)

    # -- construction from scenario params ------------------------------------------------
    @classmethod
    def from_spec(cls, spec: Trigger | dict[str, Any], name: str = "trigger") -> Trigger:
        """A trigger from a TOML table (``{kind = "patch", size = 3}``) or a Trigger."""
        if isinstance(spec, Trigger):
            return spec
        if not isinstance(spec, dict):
            raise _bad(name, spec, "a table of trigger fields")
        valid = {f.name for f in dataclasses.fields(cls)}
        for k in spec:
            if k not in valid:
                raise ValueError(f"{name}.{k}: unknown trigger field; valid: {', '.join(sorted(valid))}")
        try:
            return cls(**spec)
        except ValueError as e:
            raise ValueError(f"{name}.{e}") from None

    def to_spec(self) -> dict[str, Any]:
        """The TOML-table form accepted by :meth:`from_spec` (arrays as nested lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v.tolist()
            elif f.name == "piece":
                v = [list(p) for p in v]
            elif isinstance(v, tuple):
                v = list(v)
            if v is not None:
                out[f.name] = v
        return out

    # -- geometry --------------------------------------------------------------------------
    def _patch_cells(self, h: int, w: int) -> torch.Tensor:
        s = self.size
        if s > h or s > w:
            raise ValueError(f"size: patch of {s} px does not fit a {h}x{w} image")
        m = self.margin
        if isinstance(self.location, tuple):
            r0, c0 = self.location
        else:
            r0 = {"top": m, "bottom": h - s - m, "center": (h - s) // 2}[self.location.split("_")[0]]
            c0 = {"left": m, "right": w - s - m, "center": (w - s) // 2}[self.location.split("_")[-1]]
        if r0 < 0 or c0 < 0 or r0 + s > h or c0 + s > w:
            raise ValueError(f"location: patch at ({r0}, {c0}) of {s} px leaves the {h}x{w} image")
        box = torch.zeros(h, w, dtype=torch.bool)
        if self.shape == "square":
            box[r0 : r0 + s, c0 : c0 + s] = True
        else:
            mid = s // 2
            box[r0 : r0 + s, c0 + mid] = True
            box[r0 + mid, c0 : c0 + s] = True
        return box

    def _full(self, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask and pattern (C, H, W) of the whole (unsplit) trigger."""
        c, h, w = shape
        if self.kind == "patch":
            mask = self._patch_cells(h, w).float().expand(c, h, w)
            return mask, torch.full((c, h, w), float(self.value))
        if self.kind == "blend":
            if self.pattern is None:
                g = torch.Generator().manual_seed(int(self.seed))
                pat = torch.rand((c, h, w), generator=g)
            else:
                pat = _fit("pattern", self.pattern, shape)
            return torch.full((c, h, w), float(self.alpha)), pat
        return _fit("mask", self.mask, shape), _fit("pattern", self.pattern, shape)

    def mask_and_pattern(self, shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mask, pattern)``, both (C, H, W) float32, of this trigger (or piece)."""
        shape = tuple(int(v) for v in shape)  # type: ignore[assignment]
        mask, pat = self._full(shape)  # type: ignore[arg-type]
        if self.piece:
            keep = _select(mask.amax(0) > 0, self.piece)
            mask = mask * keep.to(mask.dtype)
        return mask.contiguous(), pat.contiguous()

    def support(self, shape: tuple[int, int, int]) -> torch.Tensor:
        """(H, W) bool: the pixels this trigger writes to."""
        return self.mask_and_pattern(shape)[0].amax(0) > 0

    # -- use -------------------------------------------------------------------------------
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The triggered copy of ``x`` (B, C, H, W) or (C, H, W); ``x`` is not modified."""
        if x.ndim not in (3, 4):
            raise ValueError(f"Trigger.apply expects (B, C, H, W) or (C, H, W), got {tuple(x.shape)}")
        mask, pat = self.mask_and_pattern(tuple(x.shape[-3:]))
        mask = mask.to(device=x.device, dtype=x.dtype)
        pat = pat.to(device=x.device, dtype=x.dtype)
        return x * (1 - mask) + mask * pat

    def split(self, k: int) -> list[Trigger]:
        """``k`` disjoint local pieces whose union is this trigger (DBA)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise _bad("k", k, "an integer >= 1")
        count = self._support_size()
        if count is not None and k > count:
            raise _bad("k", k, f"at most the {count} pixels of the trigger")
        return [dataclasses.replace(self, piece=self.piece + ((i, k),)) for i in range(k)]

    def _support_size(self) -> int | None:
        """Pixels of the support when known without an image shape (patch, pattern)."""
        if self.kind == "patch":
            s = self.size
            base = s * s if self.shape == "square" else 2 * s - 1
        elif self.kind == "pattern":
            base = int((self.mask.reshape(-1, *self.mask.shape[-2:]).amax(0) > 0).sum())
        else:
            return None
        for _, kk in self.piece:
            base = base // kk  # smallest piece size (array_split): a lower bound
        return base


def _fit(name: str, arr: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    c, h, w = shape
    if tuple(arr.shape[-2:]) != (h, w):
        raise ValueError(f"{name}: array of {tuple(arr.shape)} does not fit images of {shape}")
    if arr.ndim == 2:
        arr = arr.unsqueeze(0)
    if arr.shape[0] not in (1, c):
        raise ValueError(f"{name}: {arr.shape[0]} channels, images have {c}")
    return arr.expand(c, h, w).clone()


def _select(support: torch.Tensor, piece: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """(H, W) bool: the support pixels kept by the nested row-major split ``piece``."""
    cells = support.flatten().nonzero().flatten()
    for i, k in piece:
        if k > len(cells):
            raise ValueError(f"piece: cannot split {len(cells)} trigger pixels into {k} pieces")
        cells = torch.tensor_split(cells, k)[i]
    keep = torch.zeros(support.numel(), dtype=torch.bool)
    keep[cells] = True
    return keep.view_as(support)

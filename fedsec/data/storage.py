"""Compact storage of image sets: integer codes, converted to float32 rows on demand.

Training code sees float32 images in [0, 1] (``TensorData``). Most sources are
integers underneath: torchvision's uint8 pixels (x = code / 255), scikit-learn's
digits (0..16 ink, x = code / 16). :func:`pack` finds such a code, checking that
converting it back gives the float32 values bitwise, and keeps the uint8 codes
(a quarter of the bytes); :meth:`Packed.rows` converts only the rows asked for.
Sets without an exact integer code (``digits_scenes``) stay float32.

The conversion is torchvision's own (``ToDtype(float32, scale=True)``:
``code.to(float32) * (1 / scale)``), so a packed torchvision set gives the
same floats as the loader did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedsec.data.datasets import TensorData

# Integer scales tried, in order: 8-bit pixels, then the digits' 0..16 ink levels.
SCALES = (255, 16)


def expand(codes: torch.Tensor, scale: int) -> torch.Tensor:
    """float32 images from integer ``codes`` (any shape): ``codes * (1 / scale)``; ``scale`` 0 = already float."""
    if scale == 0:
        return codes.to(torch.float32)
    return codes.to(torch.float32).mul_(1.0 / scale)


@dataclass(frozen=True)
class Packed:
    """An image set as ``codes`` (N, C, H, W) (uint8, or float32 when ``scale`` is 0) and
    labels ``y`` (N,) int64, with ``expand(codes, scale)`` bitwise the float32 images."""

    codes: np.ndarray
    scale: int
    y: np.ndarray
    strides: tuple[int, ...] = ()
    """Element strides of one image in the source tensor, reproduced by :meth:`rows`; () = C-order.
    Layout matters for bitwise results: for a 1-channel image, strides (1, W, 1) and (H*W, W, 1)
    describe the same bytes, but convolution then takes its channels-last path, whose sums round
    differently."""

    def __len__(self) -> int:
        return len(self.y)

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.y.nbytes)

    def rows(self, index: np.ndarray | torch.Tensor) -> TensorData:
        """Rows ``index`` as float32 TensorData (the other rows are never converted)."""
        idx = np.asarray(index, dtype=np.int64)
        # Fancy indexing copies, so read-only (object-store) codes give writable rows.
        x = expand(torch.from_numpy(self.codes[idx]), self.scale)
        if self.strides and tuple(x.stride()[1:]) != self.strides:
            row = int(np.prod(x.shape[1:]))
            x = torch.empty_strided(tuple(x.shape), (row, *self.strides), dtype=x.dtype).copy_(x)
        return TensorData(x, torch.from_numpy(self.y[idx]))

    def full(self) -> TensorData:
        return self.rows(np.arange(len(self)))


def pack(data: TensorData, scales: tuple[int, ...] = SCALES) -> Packed:
    """``data`` as uint8 codes when some scale reproduces it bitwise, else as float32."""
    src = data.x.detach().cpu()
    dense = src.stride(0) == int(np.prod(src.shape[1:]))
    strides = tuple(src.stride()[1:]) if dense and len(src) > 1 else ()
    x = src.contiguous()
    y = data.y.detach().cpu().numpy().astype(np.int64, copy=False)
    for scale in scales:
        scaled = x * scale
        codes = scaled.round()
        if codes.min() < 0 or codes.max() > 255:
            continue
        u8 = codes.to(torch.uint8)
        if torch.equal(expand(u8, scale), x):
            return Packed(np.ascontiguousarray(u8.numpy()), int(scale), y, strides)
    return Packed(np.ascontiguousarray(x.numpy()), 0, y, strides)

"""The one reader of tensor files fedsec did not just create: safetensors only, checked.

``model.init``, resumed checkpoints, saved run models and students are files a
user may have downloaded or received, so they are untrusted input. PyTorch's
``torch.save`` format (``.pt``/``.pth``: a zip of pickles, or a bare pickle)
executes code when unpickled, so it is refused outright, whatever its name.
A safetensors file is a little-endian ``u64`` header length ``N``, ``N`` bytes
of JSON (``{"__metadata__": {str: str}, name: {"dtype", "shape",
"data_offsets": [begin, end]}}``), then the tensor bytes; every field is
checked here against the file's actual size before anything is allocated,
and the tensors are decoded from the validated offsets, so a truncated file,
a lying or huge header, overlapping tensors or a bad dtype is a
:class:`CheckpointError` naming the file (and tensor), never a crash deeper down.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# The safetensors library's own limit: a header larger than this is refused.
MAX_HEADER_BYTES = 100_000_000

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
for _name, _attr in [("U64", "uint64"), ("U32", "uint32"), ("U16", "uint16"),
                     ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")]:
    if hasattr(torch, _attr):
        _DTYPES[_name] = getattr(torch, _attr)

_CONVERT_HINT = (
    "convert it once, on a machine where you trust the file, with: python -c \"import torch, "
    "safetensors.torch as st; st.save_file(torch.load('IN.pt', weights_only=True), 'OUT.safetensors')\""
)


class CheckpointError(ValueError):
    """A tensor file cannot be used; the message names the file and, where one is at fault, the tensor."""

    def __init__(self, message: str, *, path: str | Path, tensor: str | None = None) -> None:
        super().__init__(message)
        self.path = str(path)
        self.tensor = tensor


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class _Header:
    data_start: int  # byte offset of the tensor data in the file (8 + N)
    metadata: dict[str, str]
    entries: tuple[_Entry, ...]


def _fail(what: str, path: Path, problem: str, tensor: str | None = None) -> CheckpointError:
    return CheckpointError(f"{what}: {str(path)!r}: {problem}", path=path, tensor=tensor)


def _sniff_foreign(head: bytes) -> str | None:
    """What a file that is not safetensors looks like, from its first bytes (None if unknown)."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "a zip archive, the format torch.save writes for .pt/.pth files"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (the legacy torch.save / pickle.dump format)"
    if head.startswith(b"\x93NUMPY"):
        return "a NumPy .npy array"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file (Keras .h5)"
    return None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_header(f, path: Path, what: str) -> _Header:
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    # A safetensors length field can start with the same bytes as a pickle (0x80 0x03 is a
    # 896-byte header), so a file whose length field fits and whose header opens with '{'
    # is safetensors whatever its first bytes look like.
    n_field = int.from_bytes(head, "little") if len(head) == 8 else -1
    plausible = 0 < n_field <= min(MAX_HEADER_BYTES, size - 8) and f.read(1) == b"{"
    f.seek(8)
    foreign = None if plausible else _sniff_foreign(head)
    if foreign is not None:
        pickled = "pickle" in foreign or "torch.save" in foreign
        why = ("fedsec never unpickles a file, because unpickling runs whatever code the file "
               "contains; " + _CONVERT_HINT) if pickled else "fedsec reads safetensors files only"
        raise _fail(what, path, f"is {foreign}, not safetensors: {why}")
    if len(head) < 8:
        raise _fail(what, path, f"is {size} bytes long, shorter than the 8-byte safetensors header "
                                "length: truncated or not a safetensors file")
    n = int.from_bytes(head, "little")
    if n > MAX_HEADER_BYTES:
        raise _fail(what, path, f"header length field says {n} bytes (limit {MAX_HEADER_BYTES}): "
                                "corrupted or not a safetensors file")
    if 8 + n > size:
        raise _fail(what, path, f"header length field says {n} bytes but only {size - 8} follow it: "
                                "truncated or not a safetensors file")
    raw = f.read(n)
    if len(raw) != n:
        raise _fail(what, path, f"could read only {len(raw)} of the {n} header bytes (file changed while reading?)")
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _fail(what, path, f"header is not valid JSON ({type(e).__name__}: {e}): "
                                "corrupted or not a safetensors file") from None
    if not isinstance(header, dict):
        raise _fail(what, path, f"header is a JSON {type(header).__name__}, expected an object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _fail(what, path, "header field __metadata__ must map strings to strings")
    entries = []
    for name, info in header.items():
        entries.append(_entry(name, info, path, what))
    entries.sort(key=lambda e: (e.begin, e.end))
    data_len = size - 8 - n
    at = 0
    for e in entries:
        if e.begin != at:
            problem = "overlaps the previous tensor" if e.begin < at else f"leaves a gap at byte {at}"
            raise _fail(what, path, f"tensor {e.name!r} data_offsets {[e.begin, e.end]} {problem}: "
                                    "corrupted header", e.name)
        if e.end > data_len:
            raise _fail(what, path, f"tensor {e.name!r} ends at data byte {e.end} but the file holds only "
                                    f"{data_len} data bytes: truncated", e.name)
        at = e.end
    if at != data_len:
        raise _fail(what, path, f"{data_len - at} bytes follow the last tensor's data: "
                                "corrupted or not a safetensors file")
    return _Header(8 + n, dict(meta), tuple(entries))


def _entry(name: str, info: Any, path: Path, what: str) -> _Entry:
    def bad(problem: str) -> CheckpointError:
        return _fail(what, path, f"tensor {name!r}: {problem}", name)

    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise bad(f"header entry {str(info)[:80]} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise bad(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad(f"shape {str(shape)[:80]} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise bad(f"data_offsets {str(offsets)[:80]} is not [begin, end] with 0 <= begin <= end")
    nbytes = math.prod(shape) * _DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise bad(f"shape {shape} of {dtype} needs {nbytes} bytes but data_offsets {offsets} "
                  f"span {offsets[1] - offsets[0]}")
    return _Entry(name, _DTYPES[dtype], tuple(shape), offsets[0], offsets[1])


def _open(path: str | Path, what: str):
    p = Path(path)
    try:
        return p, open(p, "rb")
    except FileNotFoundError:
        raise _fail(what, p, "no such file") from None
    except IsADirectoryError:
        raise _fail(what, p, "is a directory, expected a .safetensors file") from None
    except OSError as e:
        raise _fail(what, p, f"cannot be read ({e.strerror or e})") from None


def read_metadata(path: str | Path, *, what: str = "checkpoint") -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file, after checking its whole header."""
    p, f = _open(path, what)
    with f:
        return _read_header(f, p, what).metadata


def _decode(buf: bytes, e: _Entry, path: Path, what: str) -> torch.Tensor:
    if e.end == e.begin:
        return torch.empty(e.shape, dtype=e.dtype)
    raw = bytearray(buf[e.begin:e.end])  # own copy: writable, outlives the file buffer
    if e.dtype == torch.bool and any(b > 1 for b in raw):
        raise _fail(what, path, f"tensor {e.name!r}: BOOL data holds bytes other than 0 and 1", e.name)
    t = torch.frombuffer(raw, dtype=e.dtype).reshape(e.shape)
    if sys.byteorder == "big":  # safetensors stores little-endian
        t = torch.from_numpy(t.numpy().byteswap())
    return t


def _shape(t: tuple[int, ...] | torch.Size) -> str:
    return str(tuple(t))


def _compare(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path,
             what: str) -> None:
    missing = [k for k in expected if k not in loaded]
    extra = [k for k in loaded if k not in expected]
    wrong = [(k, loaded[k], expected[k]) for k in expected if k in loaded
             and (loaded[k].shape != expected[k].shape or loaded[k].dtype != expected[k].dtype)]
    if not (missing or extra or wrong):
        return

    def few(names: list[str]) -> str:
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        return ", ".join(repr(n) for n in names[:5]) + more

    problems = []
    if missing:
        problems.append(f"missing tensor(s) {few(missing)}")
    if extra:
        problems.append(f"unexpected tensor(s) {few(extra)}")
    for k, got, ref in wrong[:5]:
        problems.append(f"tensor {k!r} is {str(got.dtype).removeprefix('torch.')} {_shape(got.shape)}, "
                        f"expected {str(ref.dtype).removeprefix('torch.')} {_shape(ref.shape)}")
    if len(wrong) > 5:
        problems.append(f"{len(wrong) - 5} more tensors of the wrong shape or dtype")
    first = (missing or extra or [wrong[0][0]])[0]
    raise _fail(what, path, "does not match the model: " + "; ".join(problems), first)


def load_state(path: str | Path, *, expected: dict[str, torch.Tensor] | None = None,
               what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Read a safetensors file into CPU tensors, refusing anything else.

    ``expected``: reference tensors (e.g. ``model.state_dict()``); when given,
    the file must hold exactly these names with the same shapes and dtypes,
    and the result follows its key order. ``what`` names the source in every
    message (a scenario field such as ``"model.init"``, or ``"checkpoint"``).
    Raises :class:`CheckpointError` for every problem with the file.
    """
    p, f = _open(path, what)
    with f:
        header = _read_header(f, p, what)
        f.seek(header.data_start)
        data_len = header.entries[-1].end if header.entries else 0
        buf = f.read(data_len)
    if len(buf) != data_len:
        raise _fail(what, p, f"could read only {len(buf)} of {data_len} data bytes (file changed while reading?)")
    loaded = {e.name: _decode(buf, e, p, what) for e in sorted(header.entries, key=lambda e: e.name)}
    if expected is None:
        return loaded
    _compare(loaded, expected, p, what)
    return {k: loaded[k] for k in expected}


def load_model(path: str | Path, *, what: str = "model", device: str | torch.device = "cpu"):
    """A model file fedsec wrote (a run's model, a student, a watermarked or crafted model)
    -> ``(scenario, model)``.

    The file's ``scenario`` metadata (TOML text) rebuilds the architecture; the
    tensors are checked against it. The one "checkpoint -> scenario -> model" path of
    the project (CLI ``distill``/``audit``, plugins, experiment scripts).
    """
    from fedsec.federation.env import new_model, scenario_from_toml

    p = Path(path)
    text = read_metadata(p, what=what).get("scenario", "")
    if not text:
        raise _fail(what, p, "has no 'scenario' in its metadata, so its architecture is unknown "
                             "(fedsec writes it into every model file)")
    scenario = scenario_from_toml(text)
    model = new_model(scenario)
    model.load_state_dict(load_state(p, expected=model.state_dict(), what=what))
    return scenario, model.to(device)

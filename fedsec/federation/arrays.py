"""Model arrays handed over in memory: a Flower ``Array`` that keeps its tensor.

Flower's ``Array`` stores every array as ``numpy.save`` bytes, so a message
between two objects in the same process pays a serialise and a deserialise per
array (about 0.1 ms each, dominated by the ``.npy`` header, so about 1 ms per
message each way for the digits CNN's 8 arrays). :class:`TensorArray` is an
``Array`` that holds a private CPU copy of the tensor and produces the ``.npy``
bytes only when something reads ``data`` (Flower's transport, ``deflate``,
``count_bytes``): a receiver in the same process (the inline engine, the
strategy parsing a reply) gets its tensor back with one copy, a Ray transfer
pickles it as an ndarray (zero-copy out of the object store), and Flower's own
runtime sees the same bytes it would have made itself, so every engine still
produces the bitwise-same model.

The Message API contract is unchanged: a :class:`TensorArray` is an ``Array``
(same ``dtype``, ``shape``, ``stype``, ``data`` and ``numpy()``), it deflates as
a plain ``Array`` (the receiving side of a Flower link inflates plain Arrays),
and ``ArrayRecord.to_torch_state_dict`` works on it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.common.constant import SType


class TensorArray(Array):
    """An ``Array`` over a private CPU tensor; its ``.npy`` bytes are made on first read.

    Build with :meth:`of` (copies the tensor, so later in-place changes to the
    source never reach the message) or :meth:`adopt` (takes ownership of a tensor
    nobody else holds).
    """

    def __init__(self, tensor: torch.Tensor) -> None:  # noqa: D107 (use of / adopt)
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
            raise TypeError(f"TensorArray: expected a CPU torch.Tensor, got {type(tensor).__name__}"
                            + (f" on {tensor.device}" if isinstance(tensor, torch.Tensor) else ""))
        # Straight into __dict__: Array.__setattr__'s dirty-flag bookkeeping costs more than
        # the rest of the constructor, and a new object is dirty anyway (no _is_dirty = dirty).
        d = self.__dict__
        d["_tensor"] = tensor
        d["dtype"] = _numpy_name(tensor.dtype)  # as Array.from_numpy_ndarray records it
        d["shape"] = tuple(tensor.shape)
        d["stype"] = SType.NUMPY

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorArray:
        """A snapshot of ``tensor`` (any device): copied to CPU, detached."""
        return cls(tensor.detach().to("cpu", copy=True))

    @classmethod
    def adopt(cls, tensor: torch.Tensor) -> TensorArray:
        """Wrap ``tensor`` without copying: the caller must not keep or change it."""
        return cls(tensor.detach())

    # -- the Array interface -----------------------------------------------------------
    @property
    def data(self) -> bytes:  # type: ignore[override]
        if "_data" not in self.__dict__:
            self.__dict__["_data"] = Array.from_numpy_ndarray(self._tensor.numpy()).data
        return self.__dict__["_data"]

    @data.setter
    def data(self, value: bytes) -> None:
        # Someone replaced the bytes: they are now the truth, the tensor is stale.
        self.__dict__["_data"] = value
        self.__dict__.pop("_tensor", None)

    @property
    def _tensor(self) -> torch.Tensor:
        t = self.__dict__.get("_tensor")
        if t is None:
            t = self.__dict__["_tensor"] = torch.from_numpy(Array.numpy(self))
        return t

    def numpy(self):  # noqa: ANN201 (numpy.ndarray, Flower's return type)
        """A fresh ndarray (a copy: the receiver may write it)."""
        return self._tensor.numpy().copy()

    def tensor(self) -> torch.Tensor:
        """A fresh CPU tensor with this array's values."""
        return self._tensor.clone()

    def deflate(self) -> bytes:
        # Flower's header names the object's class and its inflater knows only Array:
        # deflate exactly as the plain Array with these bytes.
        return Array(dtype=self.dtype, shape=tuple(self.shape), stype=self.stype, data=self.data).deflate()

    def __reduce__(self):
        return (_rebuild, (self._tensor.numpy(),))


_NUMPY_NAMES: dict[torch.dtype, str] = {}


def _numpy_name(dtype: torch.dtype) -> str:
    """numpy's name of a torch dtype ('float32', 'int64', 'bool', ...); numpy's own
    ``str(dtype)`` costs about 50 us, a third of a small TensorArray."""
    name = _NUMPY_NAMES.get(dtype)
    if name is None:
        name = _NUMPY_NAMES[dtype] = str(torch.empty(0, dtype=dtype).numpy().dtype)
    return name


def _rebuild(ndarray) -> TensorArray:  # noqa: ANN001
    # A copy: an unpickled ndarray may be a read-only view of Ray's object store.
    return TensorArray(torch.from_numpy(ndarray.copy()))


def tensor_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """An ``ArrayRecord`` of :class:`TensorArray` snapshots of ``state`` (keys in order)."""
    record = ArrayRecord()
    for k, v in state.items():
        record[k] = TensorArray.of(v)
    return record


def in_memory(record: ArrayRecord) -> ArrayRecord:
    """``record`` with every array decoded once into a :class:`TensorArray` (same keys, values)."""
    if all(isinstance(v, TensorArray) for v in record.values()):
        return record
    out = ArrayRecord()
    for k, v in record.items():
        out[k] = v if isinstance(v, TensorArray) else TensorArray.adopt(torch.from_numpy(v.numpy()))
    return out


def in_memory_content(content: RecordDict) -> RecordDict:
    """``content`` with its ArrayRecords decoded once (other records shared as they are)."""
    return RecordDict({k: in_memory(v) if isinstance(v, ArrayRecord) else v for k, v in content.items()})

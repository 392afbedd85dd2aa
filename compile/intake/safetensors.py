"""Read a .safetensors file: an 8-byte header length, a JSON header and raw little-endian arrays.

Parsed here rather than through the `safetensors` package because its numpy loader cannot
represent bf16, the dtype most Hugging Face checkpoints ship in, and so that every field of a
header is checked before any data is touched. The Hugging Face reader and the quantised
checkpoint's reader both use it.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ..errors import LutlmError
from ..files import open_regular
from ..validate import file_size, integer, json_type, parse_json, show

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
           "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8}
_MAX_HEADER = 100 << 20  # the safetensors library's own limit
_MAX_DIMS = 8


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte range within the data section
    end: int


@dataclass
class Safetensors:
    """One .safetensors file: its header, checked whole before any tensor is read, and its bytes
    mapped (not read) when tensors are wanted."""

    path: Path
    entries: dict[str, TensorEntry]
    start: int  # where the data section begins
    data: np.ndarray | None

    @classmethod
    def open(cls, path: Path, map_data: bool = True) -> "Safetensors":
        with open_regular(path, "safetensors file") as f:
            entries, start = read_header(f, path)
            data = np.memmap(f, dtype=np.uint8, mode="r") if map_data else None
        return cls(path, entries, start, data)

    def array(self, name: str) -> np.ndarray:
        """Tensor `name` as stored (BF16 as its uint16 bits), a view of the mapped file."""
        e = self.entries[name]
        return self.data[self.start + e.begin : self.start + e.end].view(_DTYPES[e.dtype]).reshape(e.shape)

    def float32(self, name: str) -> np.ndarray:
        values = self.array(name)
        if self.entries[name].dtype == "BF16":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        return np.ascontiguousarray(values, dtype=np.float32)


def read_header(f: BinaryIO, path: Path) -> tuple[dict[str, TensorEntry], int]:
    """The tensors a safetensors file declares and where its data starts, every field checked: the
    data ranges tile the data section exactly (no overlap, no gap, nothing outside the file), as
    the format requires, so reading them can allocate no more than the file holds."""
    size = file_size(f)
    raw = f.read(8)
    if len(raw) < 8:
        raise LutlmError(f"{path}: not a safetensors file ({size} bytes, less than its 8-byte header length)")
    (length,) = struct.unpack("<Q", raw)
    if length > min(size - 8, _MAX_HEADER):
        raise LutlmError(f"{path}: unreadable safetensors header: its length field says {length} bytes, "
                         f"{size - 8} follow (truncated, or not a safetensors file)")
    header = parse_json(f.read(length), f"{path}: safetensors header", unique_keys=True)
    if not isinstance(header, dict):
        raise LutlmError(f"{path}: the safetensors header must be a JSON object, not {json_type(header)}")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise LutlmError(f"{path}: __metadata__ must map names to strings, not {show(metadata)}")
    entries = {name: _entry(info, f"{path}: tensor {name}") for name, info in header.items()}
    _check_tiling(entries, size - 8 - length, path)
    return entries, 8 + length


def _entry(info: Any, what: str) -> TensorEntry:
    if not isinstance(info, dict):
        raise LutlmError(f"{what} must be described by an object, not {json_type(info)}")
    dtype = info.get("dtype")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise LutlmError(f"{what}: dtype {show(dtype)} is not one of {', '.join(_DTYPES)}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise LutlmError(f"{what}: shape must be a list of at most {_MAX_DIMS} sizes, not {show(shape)}")
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise LutlmError(f"{what}: data_offsets must be [begin, end], not {show(offsets)}")
    dims = tuple(integer(d, f"{what}: shape[{i}]", 0, 1 << 62) for i, d in enumerate(shape))
    begin = integer(offsets[0], f"{what}: data_offsets[0]", 0, 1 << 62)
    end = integer(offsets[1], f"{what}: data_offsets[1]", begin, 1 << 62)
    need = math.prod(dims) * np.dtype(_DTYPES[dtype]).itemsize
    if end - begin != need:
        raise LutlmError(f"{what}: data_offsets {[begin, end]} hold {end - begin} bytes; shape {list(dims)} of {dtype} needs {need}")
    return TensorEntry(dtype, dims, begin, end)


def _check_tiling(entries: dict[str, TensorEntry], data_size: int, path: Path) -> None:
    position = 0
    for name, e in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if e.begin != position:
            raise LutlmError(f"{path}: tensor {name} starts at byte {e.begin} of the data, expected {position} "
                             f"({'overlapping another' if e.begin < position else 'a gap before it'})")
        position = e.end
    if position > data_size:
        raise LutlmError(f"{path}: truncated: its tensors need {position} bytes of data, the file holds {data_size}")
    if position < data_size:
        raise LutlmError(f"{path}: {data_size - position} bytes after the last tensor (not a safetensors file)")

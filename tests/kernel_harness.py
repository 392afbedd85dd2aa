"""Run one emitted kernel on the native WebGPU adapter (lavapipe here) with numpy arrays."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import numpy as np

from lutlm.kernels.emit import emit
from runtime_py.gpu_wgpu import WgpuBackend

_DTYPES = {"f32": np.float32, "u32": np.uint32, "i32": np.int32, "f16": np.float16,
           "vec4<f32>": np.float32}  # vec4 bindings: arrays and sizes count f32 elements


@lru_cache(maxsize=None)
def backend() -> WgpuBackend:
    return WgpuBackend()


@lru_cache(maxsize=None)
def kernel(builder: Callable[..., Any], *args: Any) -> dict[str, Any]:
    return emit(builder(*args), builder.__name__).to_json()


def run(meta: dict[str, Any], arrays: dict[str, np.ndarray], sizes: dict[str, int | float],
        repeat: int = 1) -> dict[str, np.ndarray]:
    """Bind `arrays` by binding name (missing outputs start zeroed with the size `arrays` gives
    as an int), dispatch `repeat` times, return every read_write binding's contents."""
    be = backend()
    bufs, shapes = [], {}
    for b in meta["bindings"]:
        value = arrays[b["name"]]
        if isinstance(value, np.ndarray):
            data = np.ascontiguousarray(value.astype(_DTYPES[b["dtype"]], copy=False))
            bufs.append(be.create_buffer(data.nbytes, data.tobytes()))
            shapes[b["name"]] = data.shape
        else:
            nbytes = int(value) * np.dtype(_DTYPES[b["dtype"]]).itemsize
            bufs.append(be.create_buffer(nbytes, bytes(nbytes)))
            shapes[b["name"]] = (int(value),)
    call = be.bind(meta, bufs).set(sizes)
    be.submit([call] * repeat)
    out = {}
    for b, buf in zip(meta["bindings"], bufs):
        if b["access"] == "read_write":
            dtype = np.dtype(_DTYPES[b["dtype"]])
            n = int(np.prod(shapes[b["name"]]))
            out[b["name"]] = np.frombuffer(be.read_sync(buf, dtype.itemsize * n), dtype).reshape(shapes[b["name"]])
    return out

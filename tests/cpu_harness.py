"""Run the CPU kernels' WebAssembly module (lutlm.wasm) natively in wasmtime with numpy arrays:
the wasm counterpart of kernel_harness.py. A package's GPU-layout tensors go in, repacked to the
CPU layout by the module itself, as a browser host would."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import wasmtime

from lutlm import wasm
from lutlm.errors import LutlmError
from lutlm.kernels import layout
from lutlm.quant.format import QTensor, QuantSpec


class CpuKernels:
    """One instance of the module for a SIMD level; arrays live in its memory at `alloc`ed offsets."""

    def __init__(self, level: str = "simd128") -> None:
        engine = wasmtime.Engine()
        self.module = wasmtime.Module.from_file(engine, str(wasm.build(level)))
        self.store = wasmtime.Store(engine)
        self.exports = wasmtime.Instance(self.store, self.module, []).exports(self.store)
        self.memory = self.exports["memory"]

    def call(self, name: str, *args: int | float) -> int | float:
        return self.exports[name](self.store, *args)

    def alloc(self, nbytes: int) -> int:
        ptr = self.call("alloc", nbytes)
        if not ptr:
            raise LutlmError(f"the CPU kernels' memory cannot hold {nbytes} more bytes")
        return ptr

    def put(self, array: np.ndarray) -> int:
        data = np.ascontiguousarray(array).tobytes()
        ptr = self.alloc(len(data))
        self.memory.write(self.store, data, ptr)
        return ptr

    def get(self, ptr: int, dtype: type, count: int) -> np.ndarray:
        nbytes = np.dtype(dtype).itemsize * count
        return np.frombuffer(bytes(self.memory.read(self.store, ptr, ptr + nbytes)), dtype).copy()

    def repack(self, q: QTensor) -> int:
        """The CPU layout of `q`, from the GPU layout a package stores (compile/kernels/layout.py)."""
        return self.repack_words(layout.planes(q), layout.scale_min(q), q.codes.shape, q.spec)

    def repack_words(self, planes: np.ndarray, sm: np.ndarray, shape: tuple[int, int], spec: QuantSpec) -> int:
        """The CPU layout from a package's `NAME.planes` and `NAME.sm` u32 words."""
        n, k = shape
        size = self.call("lut_weight_bytes", n, k, spec.bits, spec.group, spec.scale_bits)
        out = self.alloc(size) if size else 0
        words = self.put(planes.astype(np.uint32)), self.put(sm.astype(np.uint32))
        if not size or self.call("lut_repack", *words, n, k, spec.bits, spec.group, spec.scale_bits, out):
            raise LutlmError(f"the CPU LUT kernels do not take {spec.name} weights of shape {n}x{k}")
        return out

    def tables(self, x: np.ndarray, group: int) -> tuple[int, int, int]:
        """Offsets of the int8 tables, table scales and activation sums of `x` (lut_table)."""
        k = x.size
        table, tscale, xsum = self.alloc(4 * k), self.alloc(4 * (k // group)), self.alloc(4 * (k // group))
        if self.call("lut_table", self.put(x.astype(np.float32)), k, group, table, tscale, xsum):
            raise LutlmError(f"the CPU LUT tables do not take {k} inputs in groups of {group}")
        return table, tscale, xsum

    def lut_gemv(self, w: int, q: QTensor, x: np.ndarray) -> np.ndarray:
        """y = W x, W repacked (`repack`) from `q`."""
        n, k = q.codes.shape
        y = self.alloc(4 * n)
        spec = q.spec
        if self.call("lut_gemv", w, n, k, spec.bits, spec.group, spec.scale_bits, *self.tables(x, spec.group), y):
            raise LutlmError(f"the CPU LUT GEMV does not take {spec.name} weights of shape {n}x{k}")
        return self.get(y, np.float32, n)


@lru_cache(maxsize=None)
def _instance(level: str) -> CpuKernels:
    return CpuKernels(level)


def kernels(level: str = "simd128") -> CpuKernels:
    """The module's one instance for `level`, its memory freed of earlier tests' arrays."""
    k = _instance(level)
    k.call("reset")
    return k

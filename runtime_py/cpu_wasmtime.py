"""The CPU kernels' module natively, in wasmtime (PyPI `wasmtime`): what `lutlm --device cpu` and
the tests run. Like `gpu_wgpu`, the one place this runtime imports a package outside the
standard library, and Pyodide never imports it."""

from __future__ import annotations

from typing import Any, Mapping

from .gpu import GPUError


class WasmtimeModule:
    """`cpu.Wasm` on wasmtime: the relaxed-SIMD build where this wasmtime validates it, else the
    SIMD128 one. `builds` maps a SIMD level to the module's file (`lutlm.wasm.build`)."""

    def __init__(self, builds: Mapping[str, str]) -> None:
        import wasmtime

        engine = wasmtime.Engine()
        for level in ("relaxed", "simd128"):
            if level in builds:
                with open(builds[level], "rb") as f:
                    data = f.read()
                try:
                    wasmtime.Module.validate(engine, data)
                    break
                except wasmtime.WasmtimeError:
                    continue
        else:
            raise GPUError("this wasmtime takes neither CPU kernel build (WebAssembly SIMD is required)")
        self.level = level
        self._store = wasmtime.Store(engine)
        exports = wasmtime.Instance(self._store, wasmtime.Module(engine, data), []).exports(self._store)
        self._memory = exports["memory"]
        self._exports = exports
        self._functions: dict[str, Any] = {}  # each export, looked up once

    def call(self, name: str, *args: int) -> int:
        fn = self._functions.get(name)
        if fn is None:
            fn = self._functions[name] = self._exports[name]
        return fn(self._store, *args)

    def write(self, ptr: int, data: bytes) -> None:
        self._memory.write(self._store, data, ptr)

    def read(self, ptr: int, size: int) -> bytes:
        return bytes(self._memory.read(self._store, ptr, ptr + size))

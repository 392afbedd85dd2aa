"""The CPU kernels' module in a browser: `cpu.Wasm` on a JavaScript WebAssembly instance.

web/worker.js picks the build the browser validates (relaxed SIMD, else SIMD128), instantiates it
with no imports and hands the instance here. Bytes cross by copying between Python's buffer and a
Uint8Array over the module's memory, never element by element; the view is made for each copy,
because growing the memory (the module's `alloc`) detaches the ArrayBuffer an older view holds.
"""

from __future__ import annotations

from typing import Any

from pyodide.code import run_js  # type: ignore[import-not-found]

# One crossing for a view of [ptr, ptr + size) over the memory's current buffer.
_VIEW = "(memory) => (ptr, size) => new Uint8Array(memory.buffer, ptr, size)"


class JsModule:
    """`cpu.Wasm` on `instance` (a WebAssembly.Instance of the `level` build)."""

    def __init__(self, instance: Any, level: str) -> None:
        self.level = level
        self._exports = instance.exports
        self._view = run_js(_VIEW)(self._exports.memory)
        self._functions: dict[str, Any] = {}  # each export's proxy, looked up once

    def call(self, name: str, *args: int) -> int:
        fn = self._functions.get(name)
        if fn is None:
            fn = self._functions[name] = getattr(self._exports, name)
        return fn(*args)

    def write(self, ptr: int, data: bytes) -> None:
        if data:
            self._view(ptr, len(data)).assign(data)

    def read(self, ptr: int, size: int) -> bytes:
        return self._view(ptr, size).to_bytes() if size else b""

"""The GPU backend protocol (implemented natively in `gpu_wgpu`; the browser one uses `js`).

A backend creates buffers and pipelines once, binds a kernel's buffers once (a `Call`), and then
only rewrites small uniform structs and submits lists of calls in a single command buffer.
`read_later` queues a copy of a buffer's bytes as they are once the work submitted so far is
done, and `wait` gets them: work submitted in between keeps the GPU busy meanwhile. Kernel
metadata is the package's description of a WGSL shader: `wgsl`, `entry`, `bindings` (name,
access, dtype), `uniforms` ((field, type) pairs; TVM appends `packGridDimX`), `workgroup` and
`grid` (expressions over the uniform fields and any extra sizes the caller names).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from .expr import evaluate

_PACK = {"i32": "i", "u32": "I", "f32": "f"}
MAX_GRID = 65535  # WebGPU's default maxComputeWorkgroupsPerDimension


class GPUError(RuntimeError):
    """The adapter cannot do what was asked (missing feature, size over a limit, lost device)."""


@dataclass
class Call:
    """One kernel with its buffers bound; `set` packs the uniform struct and works out the grid.
    The struct reaches the GPU with the next submit that includes the call: the browser backend
    sends every changed struct of a decode step (about 90) in the crossing that encodes it."""

    kernel: dict[str, Any]
    pipeline: Any
    bind_group: Any
    uniform: Any
    grid: tuple[int, int, int] = (0, 0, 0)
    slot: int = -1  # the browser backend's index of this call in its JavaScript table
    item: bytes = b""  # (slot, x, y, z) as int32s for the browser backend's encoder; none if the grid is empty
    data: bytes = b""  # the packed uniform struct
    dirty: bool = False  # `data` not yet written to `uniform`

    def set(self, sizes: dict[str, int | float]) -> "Call":
        gx, gy, gz = (evaluate(e, sizes) for e in self.kernel["grid"])
        if min(gx, gy, gz) < 0 or max(gx, gy, gz) > MAX_GRID:
            raise GPUError(f"{self.kernel['name']}: grid {gx}x{gy}x{gz} outside 0..{MAX_GRID}")
        values = []
        for field, kind in self.kernel["uniforms"]:
            if field == "packGridDimX":
                values.append(max(gx - 1, 0))
            elif field in sizes:
                values.append(sizes[field])
            else:
                raise GPUError(f"{self.kernel['name']}: no value for uniform {field!r}")
        fmt = "<" + "".join(_PACK[kind] for _, kind in self.kernel["uniforms"])
        try:
            self.data, self.dirty = struct.pack(fmt, *values), True
        except struct.error as exc:  # a value its uniform's type cannot hold (the load checks try only some)
            raise GPUError(f"{self.kernel['name']}: a uniform value does not fit its type ({exc})") from None
        self.grid = (gx, gy, gz)
        self.item = struct.pack("<4i", self.slot, gx, gy, gz) if gx and gy and gz else b""
        return self


class Backend(Protocol):
    """What the runtime needs from WebGPU; implemented natively here and in the browser."""

    info: dict[str, Any]
    features: set[str]
    limits: dict[str, int]

    def check(self, kernels: dict[str, dict[str, Any]]) -> None: ...  # refuse kernels it cannot run, before loading
    def create_buffer(self, size: int, data: bytes | None = None) -> Any: ...
    def write_buffer(self, buf: Any, data: bytes, offset: int = 0) -> None: ...
    def bind(self, kernel: dict[str, Any], buffers: Sequence[Any]) -> Call: ...
    def submit(self, calls: Sequence[Call]) -> None: ...  # writes the calls' changed uniforms first
    def read_later(self, buf: Any, size: int, offset: int = 0) -> Any: ...
    async def wait(self, pending: Any) -> bytes: ...


def buffer_bytes(size: int, limit: int) -> int:
    """`size` rounded up to whole u32s, refused if over the adapter's binding limit."""
    size = max(4, -(-size // 4) * 4)
    if size > limit:
        raise GPUError(f"buffer of {size} bytes exceeds the adapter's binding limit ({limit})")
    return size


def usable(kernels: dict[str, dict[str, Any]], kid: str, features: set[str]) -> str:
    """The kernel to bind for plan kernel `kid` on an adapter with `features`: `kid` itself, or
    its `fallback` (the same bindings and uniforms) where `kid` needs a feature the adapter lacks."""
    kernel = kernels[kid]
    if set(kernel.get("features", [])) - features and "fallback" in kernel:
        return kernel["fallback"]
    return kid


def check_kernel(kernel: dict[str, Any], buffers: Sequence[Any], features: set[str]) -> int:
    """Refuse a binding count or a feature the kernel cannot have; returns its uniform buffer size."""
    if len(buffers) != len(kernel["bindings"]):
        raise GPUError(f"kernel {kernel['name']} binds {len(kernel['bindings'])} buffers, got {len(buffers)}")
    missing = set(kernel.get("features", [])) - features
    if missing:
        raise GPUError(f"kernel {kernel['name']} needs {', '.join(sorted(missing))}")
    return max(16, -(-4 * len(kernel["uniforms"]) // 16) * 16)

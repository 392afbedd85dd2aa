"""The native GPU backend: wgpu-py (Vulkan; Mesa lavapipe on this machine).

The only runtime module that imports something outside the standard library, and only here:
Pyodide never imports it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import tempfile
from typing import Any, Iterator, Sequence

from .gpu import Call, GPUError, buffer_bytes, check_kernel


_FEATURES = {"shader-f16", "timestamp-query"}
_LIMITS = ("max-storage-buffer-binding-size", "max-buffer-size", "max-compute-workgroup-storage-size",
           "max-compute-invocations-per-workgroup", "max-storage-buffers-per-shader-stage")


class WgpuBackend:
    """The `gpu.Backend` protocol on wgpu-py. The adapter and the device are requested when first
    needed, so that a package refused while it is read costs no GPU start-up (a second on lavapipe)."""

    def __init__(self) -> None:
        if not os.environ.get("XDG_RUNTIME_DIR"):  # else the Vulkan loader prints an alarming error
            private = os.path.join(tempfile.gettempdir(), f"lutlm-runtime-{os.getuid()}")
            os.makedirs(private, mode=0o700, exist_ok=True)
            os.environ["XDG_RUNTIME_DIR"] = private
        import wgpu

        self._wgpu = wgpu
        self._pipelines: dict[tuple[str, str, str], Any] = {}
        self._staging: dict[int, list[Any]] = {}  # free mappable buffers by size, for read_later
        self.allocated = {"buffers": 0, "bytes": 0}  # every buffer this backend created (soak tests)

    @functools.cached_property
    def _adapter(self) -> Any:
        adapter = self._wgpu.gpu.request_adapter_sync(power_preference="high-performance")
        if adapter is None:
            raise GPUError("no WebGPU adapter (install mesa-vulkan-drivers for lavapipe)")
        return adapter

    @functools.cached_property
    def info(self) -> dict[str, Any]:
        info = self._adapter.info
        return {"backend": "wgpu", "vendor": info["vendor"], "device": info["device"],
                "description": info["description"], "adapter_type": info["adapter_type"]}

    @functools.cached_property
    def features(self) -> set[str]:
        return set(self._adapter.features) & _FEATURES

    @functools.cached_property
    def limits(self) -> dict[str, int]:
        return {k: self._adapter.limits[k] for k in _LIMITS}

    @functools.cached_property
    def device(self) -> Any:
        return self._adapter.request_device_sync(required_features=sorted(self.features), required_limits=dict(self.limits))

    def create_buffer(self, size: int, data: bytes | None = None) -> Any:
        usage = self._wgpu.BufferUsage
        size = buffer_bytes(size, self.limits["max-storage-buffer-binding-size"])
        buf = self.device.create_buffer(size=size, usage=usage.STORAGE | usage.COPY_SRC | usage.COPY_DST)
        self.allocated["buffers"] += 1
        self.allocated["bytes"] += size
        if data:
            self.write_buffer(buf, data)
        return buf

    def write_buffer(self, buf: Any, data: bytes, offset: int = 0) -> None:
        pad = (-len(data)) % 4
        self.device.queue.write_buffer(buf, offset, bytes(data) + b"\0" * pad if pad else data)

    @contextlib.contextmanager
    def _validated(self, kernel: dict[str, Any]) -> Iterator[None]:
        """wgpu's validation errors (a kernel that does not compile, a binding its shader does not
        declare) as a one-line GPUError naming the kernel."""
        try:
            yield
        except self._wgpu.GPUError as exc:
            raise GPUError(f"kernel {kernel['name']}: {_one_line(str(exc))}") from None

    def _pipeline(self, kernel: dict[str, Any]) -> Any:
        key = (kernel["name"], kernel["entry"], kernel["wgsl"])  # by content: ids of dead dicts get reused
        if key not in self._pipelines:
            with self._validated(kernel):
                module = self.device.create_shader_module(code=kernel["wgsl"])
                self._pipelines[key] = self.device.create_compute_pipeline(
                    layout="auto", compute={"module": module, "entry_point": kernel["entry"]})
        return self._pipelines[key]

    def check(self, kernels: dict[str, dict[str, Any]]) -> None:
        """Every WGSL kernel is for WebGPU; what the adapter lacks, `bind` finds out."""

    def bind(self, kernel: dict[str, Any], buffers: Sequence[Any]) -> Call:
        size = check_kernel(kernel, buffers, self.features)
        pipeline = self._pipeline(kernel)
        usage = self._wgpu.BufferUsage
        uniform = self.device.create_buffer(size=size, usage=usage.UNIFORM | usage.COPY_DST)
        self.allocated["buffers"] += 1
        self.allocated["bytes"] += uniform.size
        entries = [{"binding": i, "resource": {"buffer": b, "offset": 0, "size": b.size}}
                   for i, b in enumerate(buffers)]
        entries.append({"binding": len(buffers), "resource": {"buffer": uniform, "offset": 0,
                                                              "size": uniform.size}})
        with self._validated(kernel):
            group = self.device.create_bind_group(layout=pipeline.get_bind_group_layout(0), entries=entries)
        return Call(kernel, pipeline, group, uniform)

    def submit(self, calls: Sequence[Call]) -> None:
        for call in calls:
            if call.dirty:
                self.write_buffer(call.uniform, call.data)
                call.dirty = False
        encoder = self.device.create_command_encoder()
        compute = encoder.begin_compute_pass()
        for call in calls:
            if 0 in call.grid:
                continue
            compute.set_pipeline(call.pipeline)
            compute.set_bind_group(0, call.bind_group)
            compute.dispatch_workgroups(*call.grid)
        compute.end()
        self.device.queue.submit([encoder.finish()])

    def read_later(self, buf: Any, size: int, offset: int = 0) -> tuple[Any, int]:
        n = -(-size // 4) * 4
        free = self._staging.setdefault(n, [])
        usage = self._wgpu.BufferUsage
        staging = free.pop() if free else self.device.create_buffer(size=n, usage=usage.MAP_READ | usage.COPY_DST)
        encoder = self.device.create_command_encoder()
        encoder.copy_buffer_to_buffer(buf, offset, staging, 0, n)
        self.device.queue.submit([encoder.finish()])
        return staging, size

    async def wait(self, pending: tuple[Any, int]) -> bytes:
        staging, size = pending
        staging.map_sync("READ")
        data = bytes(staging.read_mapped())[:size]
        staging.unmap()
        self._staging[staging.size].append(staging)
        return data

    def read_sync(self, buf: Any, size: int, offset: int = 0) -> bytes:
        """Blocking read (also the sync point: queue.on_submitted_work_done is broken, wgpu-py#834)."""
        return bytes(self.device.queue.read_buffer(buf, offset, -(-size // 4) * 4))[:size]


_SOURCE_LINE = re.compile(r"^(?:\d+\s*)?[\u2500-\u257f]")  # the quoted WGSL and its markers (box drawing)


def _one_line(message: str) -> str:
    """The substance of a multi-line wgpu error: its causes and notes, without the quoted source."""
    lines = [line.strip().removeprefix("= ") for line in message.splitlines()]
    keep = [line for line in lines if line and line not in ("Validation Error", "Caused by:")
            and not line.startswith("In wgpu") and not _SOURCE_LINE.match(line)]
    return ": ".join(keep)[:300] or "rejected by WebGPU validation"

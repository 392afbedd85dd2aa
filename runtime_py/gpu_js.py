"""The browser GPU backend: the `gpu.Backend` protocol on WebGPU through Pyodide's `js` module.

Runs inside the Web Worker that hosts Pyodide (`navigator.gpu` exists in workers). Reading a
buffer back is the one await per decode step: a copy into a mappable staging buffer, then
`mapAsync`, whose promise Pyodide's event loop awaits while the next step already runs.
"""

from __future__ import annotations

from array import array
from typing import Any, Sequence

import js  # type: ignore[import-not-found]
from pyodide.code import run_js  # type: ignore[import-not-found]
from pyodide.ffi import create_proxy, to_js  # type: ignore[import-not-found]

from .gpu import Call, GPUError, buffer_bytes, check_kernel

LIMITS = ("maxStorageBufferBindingSize", "maxBufferSize", "maxComputeWorkgroupStorageSize",
          "maxComputeInvocationsPerWorkgroup", "maxStorageBuffersPerShaderStage")


# Encoding call by call crossed from Python into JavaScript three times per dispatch (about 1300
# times for a SmolLM2 decode step), and each uniform write once more; this writes the changed
# uniform structs (`data`, whose (slot, byte offset, bytes) int32 triples are `writes`) and
# encodes a whole list, given as (slot, x, y, z) int32s indexing the [pipeline, bind group,
# uniform] table, in one crossing.
_ENCODE = """(device, table, bytes, writes, data) => {
  const w = new Int32Array(writes.slice().buffer);  // copies: aligned, whatever the bytes view
  for (let i = 0; i < w.length; i += 3) device.queue.writeBuffer(table[w[i]][2], 0, data, w[i + 1], w[i + 2]);
  const items = new Int32Array(bytes.slice().buffer);
  const encoder = device.createCommandEncoder();
  const pass = encoder.beginComputePass();
  for (let i = 0; i < items.length; i += 4) {
    const [pipeline, group] = table[items[i]];
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(items[i + 1], items[i + 2], items[i + 3]);
  }
  pass.end();
  device.queue.submit([encoder.finish()]);
}"""


def _device_lost(info: Any) -> None:
    """Tell the page: every buffer is gone with the device, so the model must be loaded again."""
    js.postMessage(_js({"type": "lost", "message": f"The GPU device was lost ({info.reason}: {info.message}). "
                        "Load the model again to continue."}))


def _js(value: Any) -> Any:
    return to_js(value, dict_converter=js.Object.fromEntries)


class JsBackend:
    def __init__(self, adapter: Any, device: Any) -> None:
        self.adapter, self.device = adapter, device
        info = getattr(adapter, "info", None)
        self.info = {"backend": "webgpu", "vendor": getattr(info, "vendor", ""), "device": getattr(info, "device", ""),
                     "description": getattr(info, "architecture", ""), "adapter_type": ""}
        self.features = {f for f in ("shader-f16", "subgroups", "timestamp-query") if device.features.has(f)}
        # the protocol's limit names are wgpu-py's (kebab-case)
        self.limits = {"max-storage-buffer-binding-size": int(device.limits.maxStorageBufferBindingSize),
                       "max-buffer-size": int(device.limits.maxBufferSize)}
        self._pipelines: dict[tuple[str, str, str], Any] = {}
        self._staging: dict[int, list[Any]] = {}  # free mappable buffers by size, for read_later
        self.allocated = {"buffers": 0, "bytes": 0}
        self._table = js.Array.new()  # [pipeline, bind group, uniform] of every bound call, at its Call.slot
        self._encode = run_js(_ENCODE)

    @classmethod
    async def create(cls) -> "JsBackend":
        gpu = getattr(js.navigator, "gpu", None)
        if gpu is None:
            raise GPUError("this browser exposes no WebGPU (navigator.gpu): set Device to CPU or Auto (on Linux, "
                           "Chromium offers WebGPU when started with --enable-unsafe-webgpu)")
        adapter = await gpu.requestAdapter()
        if not adapter:  # null: Pyodide's jsnull, which is not None
            raise GPUError("WebGPU is present but offers no adapter: set Device to CPU or Auto")
        limits = {name: getattr(adapter.limits, name) for name in LIMITS}
        features = [f for f in ("shader-f16", "subgroups") if adapter.features.has(f)]
        device = await adapter.requestDevice(_js({"requiredLimits": limits, "requiredFeatures": features}))
        device.lost.then(create_proxy(_device_lost))
        return cls(adapter, device)

    def create_buffer(self, size: int, data: bytes | None = None) -> Any:
        size = buffer_bytes(size, self.limits["max-storage-buffer-binding-size"])
        usage = js.GPUBufferUsage.STORAGE | js.GPUBufferUsage.COPY_SRC | js.GPUBufferUsage.COPY_DST
        buf = self.device.createBuffer(_js({"size": size, "usage": usage}))
        self.allocated["buffers"] += 1
        self.allocated["bytes"] += size
        if data:
            self.write_buffer(buf, data)
        return buf

    def write_buffer(self, buf: Any, data: bytes, offset: int = 0) -> None:
        pad = (-len(data)) % 4
        view = memoryview(bytes(data) + b"\0" * pad if pad else data)
        self.device.queue.writeBuffer(buf, offset, to_js(view))

    def _pipeline(self, kernel: dict[str, Any]) -> Any:
        key = (kernel["name"], kernel["entry"], kernel["wgsl"])
        if key not in self._pipelines:
            module = self.device.createShaderModule(_js({"code": kernel["wgsl"]}))
            self._pipelines[key] = self.device.createComputePipeline(
                _js({"layout": "auto", "compute": {"module": module, "entryPoint": kernel["entry"]}}))
        return self._pipelines[key]

    def check(self, kernels: dict[str, dict[str, Any]]) -> None:
        """Every WGSL kernel is for WebGPU; what the adapter lacks, `bind` finds out."""

    def bind(self, kernel: dict[str, Any], buffers: Sequence[Any]) -> Call:
        size = check_kernel(kernel, buffers, self.features)
        pipeline = self._pipeline(kernel)
        uniform = self.device.createBuffer(_js({"size": size, "usage": js.GPUBufferUsage.UNIFORM | js.GPUBufferUsage.COPY_DST}))
        self.allocated["buffers"] += 1
        self.allocated["bytes"] += size
        entries = [{"binding": i, "resource": {"buffer": b}} for i, b in enumerate(buffers)]
        entries.append({"binding": len(buffers), "resource": {"buffer": uniform}})
        group = self.device.createBindGroup(_js({"layout": pipeline.getBindGroupLayout(0), "entries": entries}))
        self._table.push(to_js([pipeline, group, uniform]))
        return Call(kernel, pipeline, group, uniform, slot=self._table.length - 1)

    def submit(self, calls: Sequence[Call]) -> None:
        writes, data = array("i"), bytearray()
        for call in calls:
            if call.dirty:
                writes.extend((call.slot, len(data), len(call.data)))
                data += call.data
                call.dirty = False
        self._encode(self.device, self._table, to_js(b"".join(call.item for call in calls)),
                     to_js(writes.tobytes()), to_js(bytes(data)))

    def read_later(self, buf: Any, size: int, offset: int = 0) -> tuple[Any, int, int, Any]:
        n = -(-size // 4) * 4
        free = self._staging.setdefault(n, [])
        staging = free.pop() if free else self.device.createBuffer(
            _js({"size": n, "usage": js.GPUBufferUsage.MAP_READ | js.GPUBufferUsage.COPY_DST}))
        encoder = self.device.createCommandEncoder()
        encoder.copyBufferToBuffer(buf, offset, staging, 0, n)
        self.device.queue.submit(_js([encoder.finish()]))
        return staging, n, size, staging.mapAsync(js.GPUMapMode.READ)

    async def wait(self, pending: tuple[Any, int, int, Any]) -> bytes:
        staging, n, size, mapped = pending
        await mapped
        data = bytes(js.Uint8Array.new(staging.getMappedRange()).to_py())
        staging.unmap()
        self._staging[n].append(staging)
        return data[:size]

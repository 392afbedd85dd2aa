"""The CPU backend: the `gpu.Backend` protocol on WebAssembly SIMD kernels (shaders/cpu).

Every buffer lives in one wasm module's memory; each kernel of the package names the CPU op that
computes the same (its `cpu` entry), and a bound call is a record of u32 words (the op, its
parameters, its buffers' offsets, its uniforms) that `submit` hands to the module's `run` as one
list: a decode step crosses into the module once. The module is the same file natively
(wasmtime, `cpu_wasmtime`) and in a browser (JavaScript's WebAssembly, `cpu_js`); both give this
module a `Wasm`.

Bit-plane and dense weights are repacked at load from the package's GPU layout into the CPU
layouts (the module does it: Pyodide has no numpy), so one package serves both backends; a weight
is kept in the GPU layout only where an op reads it so (the embedding gather).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from .gpu import Call, GPUError


class Wasm(Protocol):
    """One instance of the CPU kernels' module."""

    level: str  # "relaxed" or "simd128"

    def call(self, name: str, *args: int) -> int: ...
    def write(self, ptr: int, data: bytes) -> None: ...
    def read(self, ptr: int, size: int) -> bytes: ...


@dataclass(frozen=True)
class Op:
    """A CPU op: the record's words are `params` (from the kernel's `cpu` entry), the offsets of
    the buffers bound as `buffers` (a `?` suffix: optional, 0 when the kernel has no such binding)
    and `uniforms` ((name, struct code), looked up in the step's sizes)."""

    params: tuple[str, ...]
    buffers: tuple[str, ...]
    uniforms: tuple[tuple[str, str], ...] = ()
    repack: str = ""  # the binding whose codes (with `sm`) the op reads in the CPU layout

    @property
    def words(self) -> int:
        """The words of its record after the op code and the count (run.c's `run_words`)."""
        return len(self.params) + len(self.buffers) + len(self.uniforms)


_RUN = (("m", "i"), ("pos", "i"), ("ctx", "i"))
_HEADS = ("heads", "kv_heads", "head_dim")
# In run.c's order: an op's code is its index.
OPS: dict[str, Op] = {
    "embed": Op(("k", "bits", "group", "dense"), ("ids", "w", "sm", "x"), (("m", "i"), ("n", "i"))),
    "rms_norm": Op(("d", "residual"), ("x", "y?", "weight", "out"), (("m", "i"), ("eps", "f"))),
    "rope_append": Op((*_HEADS, "n_rot", "stride"), ("qkv", "cs", "kc", "vc"), _RUN),
    "attention": Op((*_HEADS, "q_stride"), ("q", "kc", "vc", "out"), _RUN),
    "attention_split": Op((*_HEADS, "q_stride"), ("q", "kc", "vc", "part"), _RUN[1:]),
    "attention_merge": Op(("heads", "head_dim"), ("part", "out")),
    "swiglu": Op(("ff",), ("gu", "act"), (("m", "i"),)),
    "lut_table": Op(("k", "span"), ("x", "table"), (("x0", "i"),)),
    "lut_gemv": Op(("k", "bits", "group", "scale_bits", "span"), ("w", "table", "y"), (("n", "i"), ("y0", "i")),
                   repack="w"),
    "gemm": Op(("k", "bits", "group", "dense", "scale_bits", "span", "scratch"), ("x", "w", "sm", "y"),
               (("m", "i"), ("n", "i"), ("ldy", "i"), ("y0", "i")), repack="w"),
    "dense_gemv": Op(("k", "bits", "group"), ("x", "w", "sm", "y"), (("n", "i"), ("x0", "i"), ("y0", "i")),
                     repack="w"),
    "penalize": Op((), ("logits", "seen", "ids"), (("n", "i"), ("count", "i"), ("penalty", "f"))),
    "argmax": Op((), ("logits", "out"), (("n", "i"),)),
    "sample": Op((), ("logits", "probs", "out"), (("n", "i"), ("temperature", "f"), ("top_k", "i"), ("top_p", "f"),
                                                  ("seed", "I"), ("step", "I"))),
    "nll": Op((), ("logits", "targets", "out"), (("m", "i"), ("n", "i"))),
    "gemv_f32": Op(("k",), ("w", "x", "y"), (("n", "i"),)),  # no plan's: the fp32 baseline of `lutlm bench kernels`
}
CODES = {name: code for code, name in enumerate(OPS)}


class CpuBuffer:
    """A buffer of the module's memory. A weight's bytes wait on the host until a bind says which
    layout its op reads (`raw`: as the package stores them; `tiles`: repacked), so a bit-plane
    weight only the LUT ops read is never copied in twice; the backend lets go of them at its
    first submit, when every call is bound (the host would otherwise hold the weights twice)."""

    def __init__(self, backend: "CpuBackend", size: int, data: Any) -> None:
        self.backend, self.size, self.data = backend, size, data
        self._raw = 0 if data is not None else backend.alloc(size, "a buffer")
        self._tiles = 0

    def host_bytes(self) -> bytes:
        if self.data is None:
            raise GPUError("a weight was bound after the CPU backend's first submit, which let go of its bytes")
        return bytes(self.data)

    @property
    def raw(self) -> int:
        if not self._raw:
            data = self.host_bytes()
            self._raw = self.backend.alloc(self.size, "a weight")
            self.backend.wasm.write(self._raw, data)
        return self._raw

    def tiles(self, sm: "CpuBuffer", params: dict[str, int], dense: bool) -> int:
        """The CPU layout of these bit-planes (or `dense` codes) with their scales `sm` (the shape
        from `params`)."""
        if not self._tiles:
            b = self.backend
            k, bits, group = (params[p] for p in ("k", "bits", "group"))
            scale_bits = 16 if dense else params["scale_bits"]
            row = 4 * (k * bits // 32 if dense else bits * (k // 32))  # bytes of one row's words
            n = self.size // row if row > 0 else 0
            repack = ("dense_repack", n, k, bits, group) if dense else ("lut_repack", n, k, bits, group, scale_bits)
            size = b.wasm.call("dense_weight_bytes" if dense else "lut_weight_bytes", *repack[1:])
            if not size or n * row != self.size:
                raise GPUError(f"the CPU kernels do not take {bits}-bit weights in groups of {group} "
                               f"({scale_bits}-bit scales) of {self.size} bytes with {k} inputs")
            out = b.alloc(size, "a repacked weight")
            if self._raw and sm._raw:  # already in memory (written by the host): repack in place
                rc = b.wasm.call(repack[0], self._raw, sm._raw, *repack[1:], out)
            else:  # copied in, repacked, and the copies freed again
                planes, scales = b.alloc(self.size, "a weight"), b.alloc(sm.size, "a weight")
                b.wasm.write(planes, self.host_bytes())
                b.wasm.write(scales, sm.host_bytes())
                rc = b.wasm.call(repack[0], planes, scales, *repack[1:], out)
                b.wasm.call("release", planes)
            if rc:
                raise GPUError(f"the CPU kernels cannot repack a {bits}-bit weight of {n}x{k}")
            self._tiles = out
        return self._tiles


class CpuBackend:
    """`gpu.Backend` on the CPU kernels' module `wasm` (one compute thread)."""

    features: set[str] = set()  # no subgroups: the plain kernel of each pair is bound

    def __init__(self, wasm: Wasm) -> None:
        self.wasm = wasm
        self.info = {"backend": "cpu", "simd": wasm.level, "threads": 1,
                     "description": f"WebAssembly SIMD ({wasm.level}), 1 thread"}
        self.limits = {"max-storage-buffer-binding-size": 1 << 31, "max-buffer-size": 1 << 31}
        for name, op in OPS.items():
            if wasm.call("run_words", CODES[name]) != op.words:
                raise GPUError(f"the CPU kernels' module does not match this runtime (op {name}): rebuild it")
        self.allocated = {"buffers": 0, "bytes": 0}
        self._commands, self._room = 0, 0
        self.scratch, self._scratch_size = 0, 0  # the GEMM's work for a chunk of tokens
        self.kernel_seconds = 0.0  # inside the module's `run`: the rest of a step's time is the host's
        self._held: list[CpuBuffer] = []  # weights whose bytes the host still holds (until the first submit)

    def alloc(self, size: int, what: str) -> int:
        ptr = self.wasm.call("alloc", max(size, 4)) & 0xFFFFFFFF  # wasm's i32 comes back signed past 2 GiB
        if not ptr:
            used = (self.wasm.call("alloc", 0) & 0xFFFFFFFF) / 2**20
            raise GPUError(f"out of memory for the CPU backend: {what} needs {size / 2**20:.1f} MiB more than the "
                           f"{used:.0f} MiB in use, and WebAssembly memory cannot grow that far (at most 4096 MiB, "
                           "less where the browser limits it)")
        self.allocated["buffers"] += 1
        self.allocated["bytes"] += size
        return ptr

    def create_buffer(self, size: int, data: bytes | None = None) -> CpuBuffer:
        buf = CpuBuffer(self, max(4, -(-size // 4) * 4), data if data else None)
        if buf.data is not None:
            self._held.append(buf)
        return buf

    def write_buffer(self, buf: CpuBuffer, data: bytes, offset: int = 0) -> None:
        if offset < 0 or offset + len(data) > buf.size:
            raise GPUError(f"a write of {len(data)} bytes at {offset} overruns a buffer of {buf.size}")
        self.wasm.write(buf.raw + offset, bytes(data))

    def check(self, kernels: dict[str, dict[str, Any]]) -> None:
        for kernel in kernels.values():
            self._op(kernel)

    def _op(self, kernel: dict[str, Any]) -> Op:
        """The kernel's CPU op, or the error that the package's format is not one this backend runs."""
        cpu = kernel.get("cpu")
        if not isinstance(cpu, dict):
            raise GPUError(f"this package has no CPU kernels (kernel {kernel['name']} names no CPU op; packages "
                           "compiled before the CPU backend have none): compile it again with this lutlm, or use WebGPU")
        op = OPS.get(cpu["op"])
        missing = [p for p in op.params if p not in cpu and p != "scratch"] if op else []
        if op is None or missing:
            raise GPUError(f"kernel {kernel['name']}: the CPU backend has no op {cpu['op']!r}"
                           f"{' with ' + ', '.join(missing) if missing else ''} (a newer lutlm's package?): "
                           "use WebGPU or this lutlm's compiler")
        return op

    def bind(self, kernel: dict[str, Any], buffers: Sequence[CpuBuffer]) -> Call:
        op, cpu = self._op(kernel), kernel["cpu"]
        by_name = {b["name"]: buf for b, buf in zip(kernel["bindings"], buffers)}
        params = dict(cpu)
        if "scratch" in op.params and "x" in by_name:  # room for as many tokens as x holds
            params["scratch"] = self._scratch(by_name["x"].size // max(4 * params.get("k", 1), 4), params)
        missing = [b for b in op.buffers if not b.endswith("?") and b not in by_name]
        if missing or len(buffers) != len(kernel["bindings"]):
            raise GPUError(f"kernel {kernel['name']}: its CPU op {cpu['op']} lacks {', '.join(missing) or 'bindings'}")
        if op.repack and "sm" not in by_name:
            raise GPUError(f"kernel {kernel['name']}: no scales bound for its weight")
        if "table" in by_name:  # the GPU's table buffer is larger than the CPU's tables, but check
            need = self.wasm.call("lut_table_bytes", params["k"], params["span"])
            if not need or by_name["table"].size < need:
                raise GPUError(f"kernel {kernel['name']}: its table buffer holds {by_name['table'].size} bytes; "
                               f"the CPU tables of {params['k']} inputs need {need or 'a span that divides them'}")
        ptrs = []
        for b in op.buffers:
            name = b.rstrip("?")
            buf = by_name.get(name)
            if buf is None or (name == "sm" and op.repack):
                ptrs.append(0)  # absent, or scales the CPU layout holds already
            elif name == op.repack:
                ptrs.append(buf.tiles(by_name["sm"], params, cpu["op"] == "dense_gemv" or bool(params.get("dense"))))
            else:
                ptrs.append(buf.raw)
        head = struct.pack(f"<{2 + len(op.params) + len(op.buffers)}I", CODES[cpu["op"]], op.words,
                           *(params[p] for p in op.params), *ptrs)
        return CpuCall(kernel, op, head, None)

    def _scratch(self, tokens: int, params: dict[str, int]) -> int:
        """The GEMM's scratch (planes_gemm's int16 activations of `tokens` tokens and one tile's
        work, or the dense kernel's int16 activations), grown to the most any bind asks."""
        gemm = "dense_gemm_scratch" if params.get("dense") else "planes_gemm_scratch"
        need = self.wasm.call(gemm, tokens, params.get("k", 0), params.get("group", 0))
        if need > self._scratch_size:
            self.scratch, self._scratch_size = self.alloc(need, "the prefill GEMM's scratch"), need
        return self.scratch

    def submit(self, calls: Sequence[Call]) -> None:
        for buf in self._held:  # every call is bound: the module holds what the kernels read
            buf.data = None
        self._held.clear()
        records = b"".join(c.data for c in calls)
        if len(records) > self._room:
            self._room = max(len(records), 2 * self._room)
            self._commands = self.alloc(self._room, "the command list")
        self.wasm.write(self._commands, records)
        t0 = time.perf_counter()
        failed = self.wasm.call("run", self._commands, len(calls))
        self.kernel_seconds += time.perf_counter() - t0
        if failed:
            raise GPUError(f"kernel {calls[failed - 1].kernel['name']}: the CPU kernels refused its shape or format")

    def read_later(self, buf: CpuBuffer, size: int, offset: int = 0) -> bytes:
        """The CPU has run everything submitted: the bytes are read now, before later work changes them."""
        return self.wasm.read(buf.raw + offset, size)

    async def wait(self, pending: bytes) -> bytes:
        return pending


class CpuCall(Call):
    """A bound CPU op: `data` is its whole record, the uniform words packed by `set`."""

    def __init__(self, kernel: dict[str, Any], op: Op, head: bytes, uniform: Any) -> None:
        super().__init__(kernel, op, head, uniform)
        self._fmt = "<" + "".join(code for _, code in op.uniforms)

    def set(self, sizes: dict[str, int | float]) -> "CpuCall":
        op: Op = self.pipeline
        try:
            values = [sizes[name] for name, _ in op.uniforms]
        except KeyError as exc:
            raise GPUError(f"{self.kernel['name']}: no value for uniform {exc.args[0]!r}") from None
        try:
            self.data = self.bind_group + struct.pack(self._fmt, *values)
        except struct.error as exc:
            raise GPUError(f"{self.kernel['name']}: a uniform value does not fit its type ({exc})") from None
        return self

"""`lutlm bench kernels --where wasm`: the CPU backend's matmuls on SmolLM2's shapes, natively in
wasmtime, beside the WebGPU rows of the same command.

The same matmuls as the WebGPU cases ("layer": one block's q/k/v fused, o, gate/up fused and down,
with the LUT path's table builds; "head": the 49152 x 576 output head) through the kernels a
package's plans bind on the CPU: the LUT GEMV at 4, 3, 2 bits and ternary (hi/lo tables), the
dequantise-and-dot GEMV on dense codes at 4 and 8 bits (int16 activations), the prefill GEMM of
64 tokens (per token), and the plain fp32 GEMV the LUT method is measured against (the layout
transformers.js's weights would have). Each case is a list of the CPU backend's own command
records run by one `run` call into the module, repeated to last ~40 ms a sample, cases round-robin;
weights are random codes with fixed scales, one copy per matrix (as the WebGPU cases).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from .shapes import GROUP, HEAD, LAYER, PREFILL


def _case(backend: Any, rng: Any, kernel: str, bits: Any, mats: list[tuple[str, int, int]]) -> tuple[list, int]:
    """The bound calls of one case and the bytes of weights they read."""
    import numpy as np

    from lutlm.plan import TABLE

    def buf(nbytes: int, data: Any = None) -> Any:
        return backend.create_buffer(nbytes, None if data is None else data.tobytes())

    def words(count: int) -> Any:
        return rng.integers(0, 2**32, count, dtype=np.uint64).astype(np.uint32)

    def call(op: str, params: dict[str, int], buffers: dict[str, Any], sizes: dict[str, int]) -> Any:
        kernel = {"name": op, "bindings": [{"name": b} for b in buffers], "cpu": {"op": op, **params}}
        return backend.bind(kernel, list(buffers.values())).set(sizes)

    scales = np.full((1,), np.array([0.01, -0.05], np.float16).view(np.uint32)[0], np.uint32)
    calls, nbytes, tables = [], 0, {}
    planes = 2 if bits == "t" else bits
    for name, k, n in mats:
        m = PREFILL if kernel == "gemm" else 1
        x = buf(4 * k * m, rng.uniform(-1, 1, k * m).astype(np.float32))
        y = buf(4 * n * m)
        sm = buf(4 * (k // GROUP) * n, np.resize(scales, (k // GROUP) * n))
        if kernel == "fp32":
            w = buf(4 * n * k, rng.uniform(-0.05, 0.05, n * k).astype(np.float32))
            calls.append(call("gemv_f32", {"k": k}, {"w": w, "x": x, "y": y}, {"n": n}))
            nbytes += 4 * n * k
        elif kernel == "dequant":
            w = buf(k * bits // 8 * n, words(k * bits // 32 * n))
            calls.append(call("dense_gemv", {"k": k, "bits": bits, "group": GROUP}, {"x": x, "w": w, "sm": sm, "y": y},
                              {"n": n, "x0": 0, "y0": 0}))
            nbytes += k * bits // 8 * n + 4 * (k // GROUP) * n
        else:
            w = buf(k // 8 * planes * n, words(k // 32 * planes * n))
            params = {"k": k, "bits": planes, "group": GROUP, "scale_bits": 16, "span": TABLE.span}
            if kernel == "gemm":
                calls.append(call("gemm", {**params, "dense": 0}, {"x": x, "w": w, "sm": sm, "y": y},
                                  {"m": m, "n": n, "ldy": n, "y0": 0}))
            else:
                if k not in tables:  # one table build per activation vector, as a plan has it
                    tables[k] = buf(backend.wasm.call("lut_table_bytes", k, TABLE.span))
                    calls.append(call("lut_table", {"k": k, "span": TABLE.span}, {"x": x, "table": tables[k]}, {"x0": 0}))
                calls.append(call("lut_gemv", params, {"w": w, "sm": sm, "table": tables[k], "y": y}, {"n": n, "y0": 0}))
            nbytes += k // 8 * planes * n + 4 * (k // GROUP) * n
    return calls, nbytes


CASES = [("fp32", 32), ("dequant", 8), ("dequant", 4), ("lut", 4), ("lut", 3), ("lut", 2), ("lut", "t"),
         ("gemm", 4), ("gemm", 2)]


def run(rounds: int, quick: bool = False, target_s: float = 0.04) -> list[dict[str, Any]]:
    """Rows in `lutlm bench kernels`' format (where "wasm"; ratios against the fp32 GEMV and the
    4-bit dequantise GEMV, per token, instead of a copy kernel the CPU has no counterpart of)."""
    import numpy as np

    from lutlm import build

    backend = build.backend("cpu")
    rng = np.random.default_rng(0)
    cases = []
    for shape, mats in [("layer", LAYER)] + ([] if quick else [("head", HEAD)]):
        for kernel, bits in CASES[:4] + CASES[5:6] if quick else CASES:
            if shape == "head" and kernel == "gemm":
                continue
            calls, nbytes = _case(backend, rng, kernel, bits, mats)
            shape_name = f"layer-prefill{PREFILL}" if kernel == "gemm" else shape
            cases.append({"kernel": kernel, "bits": bits, "shape": shape_name, "calls": calls, "weight_bytes": nbytes})
    samples: list[list[float]] = [[] for _ in cases]
    for _ in range(rounds):
        for case, out in zip(cases, samples):
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < target_s:
                backend.submit(case["calls"])
                reps += 1
            out.append(1000 * (time.perf_counter() - t0) / reps)
    info = {"adapter": f"wasmtime, {backend.info['description']}", "where": "wasm"}
    rows = []
    for case, s in zip(cases, samples):
        ms = statistics.median(s)
        rows.append({**info, "kernel": case["kernel"], "variant": "", "bits": case["bits"], "shape": case["shape"],
                     "tokens": PREFILL if case["kernel"] == "gemm" else 1, "ms": round(ms, 4),
                     "ms_min": round(min(s), 4), "ms_max": round(max(s), 4), "weight_bytes": case["weight_bytes"],
                     "weight_gbps": round(case["weight_bytes"] / ms / 1e6, 4), "samples": [round(v, 4) for v in s]})
    for r in rows:
        same = [c for c in rows if c["shape"] == r["shape"].split("-")[0]]
        fp32 = next(c for c in same if c["kernel"] == "fp32")
        base = next(c for c in same if c["kernel"] == "dequant" and c["bits"] == 4)
        r["speedup_vs_fp32"] = round(fp32["ms"] * r["tokens"] / r["ms"], 3)
        r["speedup_vs_dequant4"] = round(base["ms"] * r["tokens"] / r["ms"], 3)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| adapter | shape | kernel | bits | ms (median) | min-max | weight MB | GB/s | x vs fp32 (per token) "
             "| x vs dequant 4-bit (per token) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['adapter']} | {r['shape']} | {r['kernel']} | {r['bits']} | {r['ms']:.3f} | "
                     f"{r['ms_min']:.3f}-{r['ms_max']:.3f} | {r['weight_bytes'] / 1e6:.2f} | {r['weight_gbps']:.2f} | "
                     f"{r['speedup_vs_fp32']:.2f} | {r['speedup_vs_dequant4']:.2f} |")
    return "\n".join(lines)

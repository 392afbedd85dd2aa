"""`lutlm bench kernels`: LUT vs dequantise GEMV on SmolLM2's shapes, natively and in Chromium
(the CPU kernels' rows: bench/cpu_kernels.py).

One workload description (buffers with a fill rule, TVM-emitted kernels, and per case the
dispatches with their uniform values and grids) runs on two executors: wgpu-py here (lavapipe)
and a small page in headless Chromium (SwiftShader WebGPU). Cases are timed round-robin so
machine drift hits them alike; each sample is a command buffer of enough repetitions to last
~40 ms, closed by a sync; the row reports the median over rounds.

Cases ("layer" = the matmuls of one SmolLM2 block, 3.54 M weights: q/k/v fused, o, gate/up fused,
down, with the four table builds the LUT path needs; "head" = the 49152 x 576 tied output head):
copy (a streaming read of the 4-bit layer's bytes: the ceiling), dequant at 4 and 2 bits, LUT at
4, 3, 2 bits and ternary with the default table, and the other table variants at 4 and 2 bits.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from lutlm.kernels import matmul
from lutlm.kernels.emit import emit

from runtime_py.expr import evaluate

from .shapes import GROUP, HEAD, LAYER, PREFILL

DEQUANT_TILES = (4, 8)  # rows per invocation of the tiled dequantise variants
INPUT = {"qkv": "a", "o": "b", "gate_up": "c", "down": "d", "head": "e"}


@dataclass(frozen=True)
class Case:
    kernel: str  # copy | dequant | lut
    bits: int | str
    shape: str  # layer | head
    variant: str = ""


def _planes(bits: int | str) -> int:
    return 2 if bits == "t" else int(bits)


class Workload:
    """Buffers, kernels and the dispatch lists of every case, as plain JSON-able data."""

    def __init__(self) -> None:
        self.buffers: dict[str, dict[str, Any]] = {}
        self.kernels: list[dict[str, Any]] = []
        self._kernel_ids: dict[tuple, int] = {}
        self.cases: list[dict[str, Any]] = []

    def buffer(self, name: str, nbytes: int, fill: str) -> str:
        self.buffers.setdefault(name, {"bytes": nbytes, "fill": fill})
        return name

    def kernel(self, builder: Any, *args: Any) -> int:
        key = (builder.__name__, *args)
        if key not in self._kernel_ids:
            self._kernel_ids[key] = len(self.kernels)
            self.kernels.append(emit(builder(*args), builder.__name__).to_json())
        return self._kernel_ids[key]

    def call(self, kid: int, buffers: dict[str, str], sizes: dict[str, int]) -> dict[str, Any]:
        meta = self.kernels[kid]
        grid = [evaluate(e, sizes) for e in meta["grid"]]
        values = [[kind, max(grid[0] - 1, 0) if f == "packGridDimX" else sizes[f]] for f, kind in meta["uniforms"]]
        return {"kernel": kid, "buffers": [buffers[b["name"]] for b in meta["bindings"]],
                "sizes": sizes, "uniforms": values, "grid": grid}

    def add(self, case: Case, mats: list[tuple[str, int, int]], tab: matmul.Table | None = None) -> None:
        calls, weight_bytes, tabled = [], 0, set()
        for name, k, n in mats:
            x = self.buffer(f"x{k}.{INPUT[name]}", 4 * k, "f32")
            sm = self.buffer(f"sm.{name}", 4 * (k // GROUP) * n, "f16pair")
            y = self.buffer(f"y.{name}", 4 * n, "zero")
            weight_bytes += 4 * (k // GROUP) * n
            if case.kernel == "copy":
                words = k * 4 // 32 + k // GROUP  # the 4-bit codes and the scales, in one stream
                w = self.buffer(f"copy.{name}", 4 * words * n, "u32")
                calls.append(self.call(self.kernel(matmul.stream_read, words), {"w": w, "y": y}, {"n": n}))
                weight_bytes += 4 * (k * 4 // 32) * n
            elif case.kernel == "gemm":  # prefill of PREFILL tokens, codes decoded from the bit-planes
                planes = _planes(case.bits)
                xm = self.buffer(f"x{k}x{PREFILL}.{INPUT[name]}", 4 * k * PREFILL, "f32")
                ym = self.buffer(f"y{PREFILL}.{name}", 4 * n * PREFILL, "zero")
                w = self.buffer(f"planes{planes}.{name}", 4 * (k // 32) * planes * n, "u32")
                calls.append(self.call(self.kernel(matmul.gemm, k, planes, GROUP),
                                       {"x": xm, "w": w, "sm": sm, "y": ym}, {"m": PREFILL, "n": n, "ldy": n, "y0": 0}))
                weight_bytes += 4 * (k // 32) * planes * n
            elif case.kernel == "dequant":
                bits = _planes(case.bits)
                w = self.buffer(f"dense{bits}.{name}", 4 * (k * bits // 32) * n, "u32")
                tile = int(case.variant[4:]) if case.variant.startswith("rows") else 1
                calls.append(self.call(self.kernel(matmul.dequant_gemv, k, bits, GROUP, tile),
                                       {"x": x, "w": w, "sm": sm, "y": y}, {"n": n, "x0": 0, "y0": 0}))
                weight_bytes += 4 * (k * bits // 32) * n
            else:
                planes = _planes(case.bits)
                table = self.buffer(f"table.{case.variant}.{k}.{INPUT[name]}", tab.itemsize * tab.size(k), "zero")
                if table not in tabled:  # one table build per activation vector
                    tabled.add(table)
                    calls.append(self.call(self.kernel(matmul.lut_table, k, tab), {"x": x, "table": table}, {"x0": 0}))
                w = self.buffer(f"planes{planes}.{name}", 4 * (k // 32) * planes * n, "u32")
                calls.append(self.call(self.kernel(matmul.lut_gemv, k, planes, GROUP, tab),
                                       {"table": table, "w": w, "sm": sm, "y": y}, {"n": n, "y0": 0}))
                weight_bytes += 4 * (k // 32) * planes * n
        features = sorted({f for c in calls for f in self.kernels[c["kernel"]]["features"]})
        self.cases.append({"kernel": case.kernel, "variant": case.variant, "bits": case.bits, "shape": case.shape,
                           "weight_bytes": weight_bytes, "features": features, "calls": calls})

    def to_json(self) -> dict[str, Any]:
        return {"buffers": self.buffers, "kernels": self.kernels, "cases": self.cases}


def table_name(tab: matmul.Table) -> str:
    return f"w{tab.width}{'m' if tab.mirror else ''}{'-f16' if tab.dtype == 'float16' else ''}"


def build(quick: bool = False) -> Workload:
    wl = Workload()
    default = matmul.Table()
    others = [matmul.Table(4, False), matmul.Table(4, True), matmul.Table(8, True), matmul.Table(8, False, "float16")]
    shapes = [("layer", LAYER)] + ([] if quick else [("head", HEAD)])
    for shape, mats in shapes:
        wl.add(Case("copy", 4, shape), mats)
        for bits in (4, 2):
            wl.add(Case("dequant", bits, shape), mats)
        if not quick:  # each invocation computing several rows shares each activation load
            for tile in DEQUANT_TILES:
                wl.add(Case("dequant", 4, shape, f"rows{tile}"), mats)
        for bits in ((4, 2) if quick else (4, 3, 2, "t")):
            wl.add(Case("lut", bits, shape, table_name(default)), mats, default)
        if shape == "layer" and not quick:
            for bits in (4, 2):
                wl.add(Case("gemm", bits, f"layer-prefill{PREFILL}"), mats)
            for tab in others:
                for bits in (4, 2):
                    wl.add(Case("lut", bits, shape, table_name(tab)), mats, tab)
    return wl


def run_native(wl: Workload, rounds: int, target_ms: float = 40.0) -> tuple[dict[str, Any], list[list[float]]]:
    """Time every case on the wgpu-py adapter; returns adapter info and per-case samples (ms)."""
    import numpy as np

    from runtime_py.gpu import usable
    from runtime_py.gpu_wgpu import WgpuBackend

    be = WgpuBackend()
    rng = np.random.default_rng(0)
    bufs = {}
    for name, b in wl.buffers.items():
        n = -(-b["bytes"] // 4)
        if b["fill"] == "u32":
            data = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
        elif b["fill"] == "f32":
            data = rng.uniform(-1, 1, n).astype(np.float32)
        elif b["fill"] == "iota":  # token ids 0, 1, 2, ...
            data = np.arange(n, dtype=np.uint32)
        elif b["fill"] == "f16pair":  # scale 0.01, minimum -0.05
            data = np.full(n, np.array([0.01, -0.05], np.float16).view(np.uint32)[0], np.uint32)
        else:
            data = np.zeros(n, np.uint32)
        bufs[name] = be.create_buffer(4 * n, data.tobytes())
    by_name = {k["name"]: k for k in wl.kernels}
    cases = []
    for case in wl.cases:
        if set(case["features"]) - be.features:
            cases.append([])
            continue
        calls = [be.bind(by_name[usable(by_name, wl.kernels[c["kernel"]]["name"], be.features)],
                         [bufs[b] for b in c["buffers"]]).set(c["sizes"]) for c in case["calls"]]
        cases.append(calls)
    probe = bufs[next(iter(bufs))]

    def once(calls: list, reps: int) -> float:
        t0 = time.perf_counter()
        be.submit(calls * reps)
        be.read_sync(probe, 4)
        return (time.perf_counter() - t0) * 1000 / reps

    reps = [max(1, int(target_ms / max(once(calls, 1), 0.05))) if calls else 0 for calls in cases]
    samples: list[list[float]] = [[] for _ in cases]
    for _ in range(rounds):
        for i, calls in enumerate(cases):
            if calls:
                samples[i].append(once(calls, reps[i]))
    info = be.info
    adapter = f"{info['device']}, {info['description']}"
    return {"adapter": adapter, "where": "native"}, samples


def _on_bench_page(wl: Workload, call: str, args: list[Any], what: str) -> dict[str, Any]:
    """`window.CALL(...args)` on the bench page serving `wl` in headless Chromium; its result, or
    a RuntimeError with the page's error."""
    from .browser import serve_and_open

    with serve_and_open(Path(__file__).parent / "web", "kernels.html", {"workload.json": json.dumps(wl.to_json())}) as page:
        result = page.evaluate(f"(args) => window.{call}(...args)", args)
    if "error" in result:
        raise RuntimeError(f"browser kernel {what}: {result['error']}")
    return result


def run_browser(wl: Workload, rounds: int, target_ms: float = 40.0,
                without: Sequence[str] = ()) -> tuple[dict[str, Any], list[list[float]]]:
    """The same workload in headless Chromium (SwiftShader WebGPU), via the bench page; kernels
    that need a feature in `without` run as their fallbacks."""
    result = _on_bench_page(wl, "runKernelBench", [rounds, target_ms, list(without)], "bench")
    return {"adapter": result["adapter"], "where": "browser"}, result["samples"]


def browser_outputs(wl: Workload, case: int, names: Sequence[str],
                    without: Sequence[str] = ()) -> tuple[dict[str, list[float]], list[str]]:
    """Case `case` of `wl` run once in headless Chromium on the filled buffers; the named buffers'
    contents as f32 (a kernel and its fallback compared on the same inputs) and the features the
    device had."""
    result = _on_bench_page(wl, "runKernelOutputs", [case, list(names), list(without)], "run")
    return result["outputs"], result["features"]


def rows(wl: Workload, info: dict[str, Any], samples: list[list[float]]) -> list[dict[str, Any]]:
    out = []
    for case, s in zip(wl.cases, samples):
        if not s:  # the adapter lacks a feature the case needs
            continue
        ms = statistics.median(s)
        out.append({**info, "kernel": case["kernel"], "variant": case["variant"], "bits": case["bits"],
                    "shape": case["shape"], "tokens": PREFILL if case["kernel"] == "gemm" else 1, "ms": round(ms, 4), "ms_min": round(min(s), 4), "ms_max": round(max(s), 4),
                    "weight_bytes": case["weight_bytes"], "weight_gbps": round(case["weight_bytes"] / ms / 1e6, 4),
                    "samples": [round(v, 4) for v in s]})
    for r in out:  # against the decode rows of the same weights (prefill: per token)
        same = [c for c in out if c["shape"] == r["shape"].split("-")[0] and c["adapter"] == r["adapter"]]
        copy = next(c for c in same if c["kernel"] == "copy")
        base = next(c for c in same if c["kernel"] == "dequant" and c["bits"] == 4 and not c["variant"])
        r["ratio_to_copy"] = round(r["weight_gbps"] / copy["weight_gbps"], 4)
        r["speedup_vs_dequant4"] = round(base["ms"] * r["tokens"] / r["ms"], 3)
    return out


def markdown(all_rows: list[dict[str, Any]]) -> str:
    lines = ["| adapter | shape | kernel | table | bits | ms (median) | min-max | weight MB | GB/s | ratio to copy "
             "| x vs dequant 4-bit (per token) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in all_rows:
        lines.append(f"| {r['adapter']} | {r['shape']} | {r['kernel']} | {r['variant'] or '-'} | {r['bits']} | "
                     f"{r['ms']:.3f} | {r['ms_min']:.3f}-{r['ms_max']:.3f} | {r['weight_bytes'] / 1e6:.2f} | "
                     f"{r['weight_gbps']:.2f} | {r['ratio_to_copy']:.2f} | {r['speedup_vs_dequant4']:.2f} |")
    return "\n".join(lines)


def measure(wl: Workload, where: list[str], rounds: int,
            to_rows: Callable[[dict[str, Any], list[list[float]]], list[dict[str, Any]]],
            json_path: str | None, without: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Run `wl` on each executor in `where` (one that cannot run is reported and skipped), turn
    each one's samples into rows, and write them all to `json_path` if given. `without`: browser
    adapter features left unused (natively only shader-f16 and timestamp-query are ever asked for)."""
    all_rows = []
    for w in where:
        t0 = time.time()
        try:
            info, samples = run_native(wl, rounds) if w == "native" else run_browser(wl, rounds, without=without)
        except Exception as exc:  # an adapter that cannot run is reported and skipped
            print(f"{w}: skipped: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
            continue
        print(f"{w}: {info['adapter']}, {rounds} rounds in {time.time() - t0:.1f} s", file=sys.stderr)
        all_rows += to_rows(info, samples)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(all_rows, indent=1) + "\n")
    return all_rows


def main(where: list[str], rounds: int, json_path: str | None, quick: bool) -> None:
    """WebGPU (native, browser) and the CPU kernels in wasmtime (wasm), one table each."""
    from . import cpu_kernels

    gpu = [w for w in where if w != "wasm"]
    all_rows = []
    if gpu:
        t0 = time.time()
        wl = build(quick)
        print(f"emitted {len(wl.kernels)} kernels for {len(wl.cases)} cases in {time.time() - t0:.1f} s", file=sys.stderr)
        all_rows = measure(wl, gpu, rounds, lambda info, samples: rows(wl, info, samples), None)
        print(markdown(all_rows))
    if "wasm" in where:
        wasm_rows = cpu_kernels.run(rounds, quick)
        print(("\n" if gpu else "") + cpu_kernels.markdown(wasm_rows))
        all_rows += wasm_rows
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(all_rows, indent=1) + "\n")

"""`lutlm bench step PACKAGE`: where a decode step's (or prefill chunk's) time goes, per kernel,
on WebGPU (native, browser) or on the CPU backend.

The package's own decode, head and greedy plans (with `--prefill M`, its prefill and head plans
for a chunk of M prompt tokens): its WGSL, buffers and dispatch grids at position `pos`, the cache
sized for `ctx` tokens (by default what the app and the terminal chat give a session, since a
kernel's speed can depend on it), become a `kernels` workload: weights and the residual stream
hold random values, caches and other activations zeros. Each kernel's dispatches of one step run
as a case of their own, next to the whole step as one command buffer. What the step leaves out is
the host's share of a real decode: building the calls, the uniform writes and the 4-byte readback
(a decode row of `lutlm bench model` minus this step's time).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

from lutlm.errors import LutlmError
from runtime_py.engine import default_ctx
from runtime_py.expr import evaluate
from runtime_py.package import MAX_BYTES, buffer_sizes, parse_manifest

from .kernels import Workload, measure

DECODE = ("decode", "head", "greedy")
PREFILL = ("prefill", "head")


def workload(package: Path, pos: int, ctx: int | None = None, prefill: int = 0) -> tuple[Workload, list[str], int]:
    """The decode step at position `pos` (or with `prefill` > 0 the prefill chunk of that many
    tokens from there) with a cache of `ctx` tokens (default: a session's) as case 0, then one case
    per kernel; also returns the context used."""
    manifest = parse_manifest((package / "manifest.json").read_bytes())  # PackageError if invalid
    ctx = ctx or default_ctx(manifest)
    if prefill > manifest["chunk"]:
        raise LutlmError(f"--prefill {prefill}: a prefill chunk holds 1 to {manifest['chunk']} tokens")
    m, plans = (prefill, PREFILL) if prefill else (1, DECODE)
    if not pos + m <= ctx <= manifest["max_ctx"]:
        raise LutlmError(f"--ctx {ctx} must be above --pos {pos} plus the tokens of the step and at most "
                         f"the model's {manifest['max_ctx']}")
    wl = Workload()
    # activations and caches; x and h hold values, ids distinct tokens (a prefill's rows differ)
    for name, size in buffer_sizes(manifest, ctx, MAX_BYTES).items():
        wl.buffer(name, size, "f32" if name in ("x", "h") else "iota" if name == "ids" else "zero")
    for name, t in manifest["tensors"].items():
        wl.buffer(name, t["bytes"], "f16pair" if name.endswith(".sm") else "f32" if t["dtype"] == "f32" else "u32")
    ids = {}
    for name, k in manifest["kernels"].items():
        ids[name] = len(wl.kernels)
        wl.kernels.append({**k, "name": name, "wgsl": (package / k["file"]).read_text()})
    variables = {"m": m, "pos": pos, "ctx": ctx}
    calls, kinds = [], []
    for plan in plans:
        for step in manifest["plans"][plan]:
            sizes = {f: v if isinstance(v, (int, float)) else evaluate(v, variables) for f, v in step["sizes"].items()}
            call = wl.call(ids[step["kernel"]], dict(zip((b["name"] for b in wl.kernels[ids[step["kernel"]]]["bindings"]),
                                                         step["bind"])), sizes)
            calls.append(call)
            kinds.append(step["kernel"])

    def case(name: str, group: list[dict[str, Any]]) -> None:
        wl.cases.append({"kernel": name, "variant": "", "bits": 0, "shape": "step", "weight_bytes": 0,
                         "features": sorted({f for c in group for f in wl.kernels[c["kernel"]]["features"]
                                             if "fallback" not in wl.kernels[c["kernel"]]}),
                         "calls": group})

    case("step", calls)
    names = ["step"] + list(dict.fromkeys(kinds))
    for name in names[1:]:
        case(name, [c for c, k in zip(calls, kinds) if k == name])
    return wl, names, ctx


def rows(info: dict[str, Any], names: list[str], wl: Workload, samples: list[list[float]], pos: int,
         ctx: int, m: int = 1) -> list[dict[str, Any]]:
    out = []
    step_ms = statistics.median(samples[0])
    for name, case, s in zip(names, wl.cases, samples):
        ms = statistics.median(s)
        n = len(case["calls"])
        out.append({**info, "pos": pos, "ctx": ctx, "tokens": m, "kernel": name, "dispatches": n, "ms": round(ms, 3),
                    "ms_per_dispatch": round(ms / n, 4), "share": round(ms / step_ms, 4),
                    "samples": [round(v, 3) for v in s]})
    return out


def markdown(all_rows: list[dict[str, Any]]) -> str:
    lines = ["| where | kernel | dispatches | ms (median) | ms per dispatch | share of the step |", "|---|---|---|---|---|---|"]
    for r in all_rows:
        name = "whole step, one command buffer" if r["kernel"] == "step" else r["kernel"]
        lines.append(f"| {r['where']} | {name} | {r['dispatches']} | {r['ms']:.2f} | {r['ms_per_dispatch']:.3f} | "
                     f"{100 * r['share']:.0f}% |")
    for where in dict.fromkeys(r["where"] for r in all_rows):
        mine = [r for r in all_rows if r["where"] == where]
        parts = sum(r["ms"] for r in mine if r["kernel"] != "step")
        lines.append(f"\n{where}: the kernels timed apart add up to {parts:.1f} ms against {mine[0]['ms']:.1f} ms "
                     "for the whole step")
    return "\n".join(lines)


def run_cpu(package: Path, pos: int, rounds: int, ctx: int | None, prefill: int,
            target_s: float = 0.04) -> list[dict[str, Any]]:
    """The same step on the CPU backend (the package's own weights, in wasmtime): the engine's
    command records of the step, each kernel's apart and all together, each sample repeated to
    last ~`target_s`, rounds interleaved. The records run as the engine runs them: one `run` call
    into the module per list."""
    import time

    from lutlm import build
    from runtime_py.engine import Sampling

    eng = build.open_package(package, ctx, device="cpu").engine
    m, plans = (prefill, PREFILL) if prefill else (1, DECODE)
    if not pos + m <= eng.ctx:
        raise LutlmError(f"--pos {pos} plus the step's tokens exceed the {eng.ctx}-token context")
    calls = eng._calls(plans, eng._variables(m, pos, Sampling(), 0))
    names = ["step"] + list(dict.fromkeys(c.kernel["name"] for c in calls))
    groups = [calls] + [[c for c in calls if c.kernel["name"] == n] for n in names[1:]]
    samples: list[list[float]] = [[] for _ in groups]
    for _ in range(rounds):
        for group, out in zip(groups, samples):
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < target_s:
                eng.backend.submit(group)
                reps += 1
            out.append(1000 * (time.perf_counter() - t0) / reps)
    info = {"where": "cpu", "adapter": eng.backend.info["description"]}
    step_ms = statistics.median(samples[0])
    return [{**info, "pos": pos, "ctx": eng.ctx, "tokens": m, "kernel": name, "dispatches": len(group),
             "ms": round(statistics.median(s), 3), "ms_per_dispatch": round(statistics.median(s) / len(group), 4),
             "share": round(statistics.median(s) / step_ms, 4), "samples": [round(v, 3) for v in s]}
            for name, group, s in zip(names, groups, samples)]


def main(package: Path, where: list[str], pos: int, rounds: int, json_path: str | None, ctx: int | None = None,
         prefill: int = 0, without: Sequence[str] = ()) -> None:
    """Time a decode step, or with `prefill` > 0 a prefill chunk of that many tokens; `without`
    names browser features to leave unused (their kernels' fallbacks run), for A/B runs. `where`:
    native and browser (WebGPU), cpu (the CPU kernels in wasmtime)."""
    wl, names, ctx = workload(package, pos, ctx, prefill)
    m = prefill or 1
    what = f"prefill of {m} tokens from" if prefill else "decode step at"
    print(f"{package.name}: {what} position {pos} of a {ctx}-token context, {len(wl.cases[0]['calls'])} "
          f"dispatches of {len(names) - 1} kernels", file=sys.stderr)
    gpu = [w for w in where if w != "cpu"]
    all_rows = measure(wl, gpu, rounds, lambda info, samples: rows(info, names, wl, samples, pos, ctx, m),
                       None) if gpu else []
    if "cpu" in where:
        all_rows += run_cpu(package, pos, rounds, ctx, prefill)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(all_rows, indent=1) + "\n")
    print(markdown(all_rows))

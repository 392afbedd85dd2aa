"""What a benchmark run leaves behind: JSON (machine, command, every row with its raw samples), a
Markdown table (median, min and max), the claims as ratios measured in the run, and a PNG chart
of decode and prefill tokens/s per system."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TWO_OVER_FOUR = 1.6  # issue 7's targets: lutlm 2-bit LUT decode over its 4-bit LUT


def target(peer: dict[str, Any]) -> float | None:
    """Issue 7's decode-ratio target of lutlm's best browser variant over `peer`."""
    if peer["system"].startswith("transformers.js") and peer["where"] == "browser-webgpu":
        return 10.0
    return 0.5 if peer["system"].startswith("wllama") else None


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare runs: CPU, cores, OS, Python, Chromium."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    try:
        chromium = subprocess.run(["/usr/bin/chromium", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        chromium = None
    return {"cpu": cpu, "cores": os.cpu_count(), "os": platform.platform(), "python": platform.python_version(),
            "chromium": chromium, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _cell(r: dict[str, Any], key: str, fmt: str) -> str:
    if key not in r:
        return "-"
    lo, hi = r.get("range", {}).get(key, [r[key], r[key]])
    return f"{format(r[key], fmt)} ({format(lo, fmt)}-{format(hi, fmt)})" if lo != hi else format(r[key], fmt)


def _mib(value: int | None) -> str:
    return f"{value / 2**20:.0f}" if value else "-"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| system | variant | where | prompt tokens | load s cold / warm | ttft s | prefill tok/s | decode tok/s "
             "| memory MiB | wasm heap MiB | backend MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        warm = f" / {r['warm_load_s']:.2f}" if r.get("warm_load_s") is not None else ""
        lines.append(f"| {r['system']} | {r['variant']} | {r['where']} | {r['prompt_tokens']} | {r['load_s']:.2f}{warm} | "
                     f"{_cell(r, 'ttft_s', '.2f')} | {_cell(r, 'prefill_tps', '.1f')} | {_cell(r, 'decode_tps', '.2f')} | "
                     f"{_mib(r.get('memory_bytes'))} | {_mib(r.get('wasm_bytes'))} | {_mib(r.get('gpu_bytes'))} |")
    return "\n".join(lines) + "\n\nMedians, with (min-max) over the repetitions. Memory: what Chromium's " \
        "performance.measureUserAgentSpecificMemory attributes to the page after the run (JS heaps; it does not " \
        "appear to count workers' wasm memories); wasm heap: the size of lutlm's Pyodide heap in its worker after " \
        "the run (not observable from outside wllama's worker); backend: what the lutlm runtime allocated " \
        "on its backend (GPU buffers, or the CPU kernels' WebAssembly memory: weights repacked, KV cache, " \
        "activations)."


def claims(rows: list[dict[str, Any]]) -> list[str]:
    """Ratios of decode tokens/s measured in this run, per prompt size: lutlm's fastest browser
    variant over each peer, and lutlm's 2-bit over its 4-bit LUT variant on each executor."""
    out = []
    for size in sorted({r["prompt_tokens"] for r in rows}):
        same = [r for r in rows if r["prompt_tokens"] == size and r.get("decode_tps")]
        mine = [r for r in same if r["system"] == "lutlm" and r["where"] == "browser-webgpu"]
        if mine:
            best = max(mine, key=lambda r: r["decode_tps"])
            for peer in (r for r in same if r["system"] != "lutlm"):
                ratio, goal = best["decode_tps"] / peer["decode_tps"], target(peer)
                goal = f" (target {goal:g}x: {'met' if ratio >= goal else 'not met'})" if goal else ""
                out.append(f"- {size}-token prompt: lutlm {best['variant']} in the browser / {peer['system']} "
                           f"{peer['variant']} ({peer['where']}): decode x{ratio:.2f}{goal}")
        for where in ("browser-webgpu", "native"):
            lut = {r["variant"].split("-bit")[0]: r for r in same if r["system"] == "lutlm" and r["where"] == where
                   and "-bit lut " in r["variant"]}  # f16 scales in groups of 32 only
            if "2" in lut and "4" in lut:
                ratio = lut["2"]["decode_tps"] / lut["4"]["decode_tps"]
                out.append(f"- {size}-token prompt, lutlm {where}: 2-bit LUT / 4-bit LUT decode x{ratio:.2f} "
                           f"(target {TWO_OVER_FOUR:g}x: {'met' if ratio >= TWO_OVER_FOUR else 'not met'})")
    return out


# issue 37's targets for lutlm on its CPU kernels in the browser (one thread): decode over a peer,
# per lutlm variant; (lutlm variant prefix, peer system prefix, peer variant text, target)
CPU_TARGETS = (("2-bit lut", "transformers.js", "fp32 ONNX, wasm, 1 thread", 3.0),
               ("2-bit lut", "wllama", "2 thread", 5.0),
               ("3-bit g16, 8-bit scales lut", "transformers.js", "fp32 ONNX, wasm, 1 thread", 2.0),
               ("4-bit lut", "transformers.js", "fp32 ONNX, wasm, 1 thread", 2.0),
               ("2-bit lut", "llama.cpp", "1 thread", 1.0))


def cpu_claims(rows: list[dict[str, Any]]) -> list[str]:
    """Issue 37's ratios, measured in this run: lutlm's CPU kernels in the browser (decode) over
    the peers it names, and prefill over transformers.js wasm fp32 on each prompt."""
    out = []
    for size in sorted({r["prompt_tokens"] for r in rows}):
        same = [r for r in rows if r["prompt_tokens"] == size and r.get("decode_tps")]
        mine = [r for r in same if r["system"] == "lutlm" and r["where"] == "browser-cpu"]
        for variant, system, label, goal in CPU_TARGETS:
            me = next((r for r in mine if r["variant"].startswith(variant + " ")), None)
            peer = next((r for r in same if r["system"].startswith(system) and label in r["variant"]), None)
            if me and peer:
                ratio = me["decode_tps"] / peer["decode_tps"]
                out.append(f"- {size}-token prompt: lutlm {me['variant']} (browser, CPU) / {peer['system']} "
                           f"{peer['variant']}: decode x{ratio:.2f} (target {goal:g}x: {'met' if ratio >= goal else 'not met'})")
        tjs = next((r for r in same if r["system"].startswith("transformers.js") and "fp32 ONNX, wasm" in r["variant"]), None)
        if mine and tjs and tjs.get("prefill_tps"):
            best = max(mine, key=lambda r: r.get("prefill_tps") or 0)
            ratio = best["prefill_tps"] / tjs["prefill_tps"]
            out.append(f"- {size}-token prompt: lutlm {best['variant']} (browser, CPU) / transformers.js fp32 wasm: "
                       f"prefill x{ratio:.2f} (target 1x: {'met' if ratio >= 1 else 'not met'})")
    return out


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Horizontal bars, log scale: decode and prefill tokens/s of every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("decode_tps") or r.get("prefill_tps")]
    labels = [f"{r['system']} {r['variant']} [{r['where']}, {r['prompt_tokens']} tok]" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(15, 1.2 + 0.32 * len(rows)), sharey=True)
    for ax, key, title in ((axes[0], "decode_tps", "decode tokens/s"), (axes[1], "prefill_tps", "prefill tokens/s")):
        values = [r.get(key) or 0 for r in rows]
        colors = ["#999999" if r["system"] != "lutlm" else "#e07b1f" if r["where"].endswith("cpu") else "#2a7ab9"
                  for r in rows]
        ax.barh(range(len(rows)), values, color=colors)
        for i, v in enumerate(values):
            if v:
                ax.text(v, i, f" {v:.3g}", va="center", fontsize=7)
        ax.set_xscale("log")
        ax.set_title(title + " (median, log scale)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), labels, fontsize=7)
    axes[0].invert_yaxis()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long labels widen the image instead of being cut
    plt.close(fig)


STOPPED = "This run was stopped before the end: only the stages it finished are here."


def write(rows: list[dict[str, Any]], json_path: Path | None, out_dir: Path | None, command: list[str],
          stopped: bool = False) -> str:
    """Write what was asked for; returns the Markdown table plus claims (also printed). A `stopped`
    run says so in both files: its rows are only the stages that finished."""
    text = markdown(rows)
    said = claims(rows)
    if said:
        text += "\n\nDecode ratios measured in this run:\n" + "\n".join(said)
    on_cpu = cpu_claims(rows)
    if on_cpu:
        text += "\n\nlutlm on its CPU kernels in the browser (one thread), measured in this run:\n" + "\n".join(on_cpu)
    if stopped:
        text = f"{STOPPED}\n\n{text}"
    doc = {"machine": machine(), "command": command, "stopped": stopped, "rows": rows}
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "bench.md").write_text(f"{doc['machine']['date']}, {doc['machine']['cpu']} "
                                         f"({doc['machine']['cores']} cores), {doc['machine']['chromium']}\n\n{text}\n")
        chart(rows, out_dir / "bench.png")
        json_path = json_path or out_dir / "bench.json"
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=1) + "\n")
    print(text)
    if out_dir:
        print(f"\nwrote {json_path}, {out_dir / 'bench.md'}, {out_dir / 'bench.png'}", file=sys.stderr)
    return text

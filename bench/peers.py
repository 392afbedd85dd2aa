"""Peers measured in the same run as lutlm, in headless Chromium on the same prompts:
- wllama (npm @wllama/wllama: llama.cpp in wasm) on the GGUF the lutlm packages were compiled from;
- transformers.js (npm @huggingface/transformers, onnxruntime-web) on the same quantised weights
  exported by `lutlm export onnx`, on WebGPU and on wasm.
Each is served from a throwaway site on 127.0.0.1 with cross-origin isolation (multi-threaded
wasm needs it); a peer that cannot run is skipped with a message."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "node_modules"
WLLAMA = NODE / "@wllama" / "wllama"
TRANSFORMERS = NODE / "@huggingface" / "transformers"
ORT = NODE / "onnxruntime-web"
# transformers.js targets: (device, ONNX dtype, wasm threads)
TJS_TARGETS = (("webgpu", "q4", 1), ("wasm", "q4", 1), ("wasm", "fp32", 1))

Prompts = list[tuple[list[dict[str, str]], int]]  # (chat messages, prompt token count)


def _version(package: Path) -> str:
    import json

    return json.loads((package / "package.json").read_text())["version"]


# The peers' pages start their workers from blob: URLs; still nothing from another origin.
PEER_CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval' 'unsafe-eval' blob:; worker-src 'self' blob:; "
            "connect-src 'self' blob: data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'")


@contextlib.contextmanager
def _site(pages: tuple[str, ...], links: dict[str, Path]) -> Iterator[str]:
    """Bench pages plus symlinked folders/files, served with COOP/COEP; yields the base URL."""
    from lutlm import webapp

    with tempfile.TemporaryDirectory(prefix="lutlm-peer-") as tmp:
        site = Path(tmp)
        for name in pages:
            (site / name).write_bytes((Path(__file__).parent / "web" / name).read_bytes())
        for name, target in links.items():
            (site / name).symlink_to(target.resolve(), target_is_directory=target.is_dir())
        with webapp.serving(site, csp=PEER_CSP) as base:
            yield base


def _run_page(url: str, ready: str, call: str, args: list[Any], webgpu: bool = False) -> tuple[dict[str, Any], list[str]]:
    """Open `url` in a fresh Chromium, wait for `ready`, evaluate `call(args)`; returns the result
    and the refused off-site requests."""
    from lutlm.headless import chromium

    offsite: list[str] = []
    with chromium(offsite, webgpu=webgpu) as context:
        page = context.new_page()
        page.goto(url)
        page.wait_for_function(ready)
        result = page.evaluate(call, args)
    return result, offsite


def _reason(error: str) -> str:
    """The message of a JS error, without its stack (a wasm abort has only a stack)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("at ", "wasm-func"))]
    return said[0] if said else "aborted in " + " < ".join(line.split("(")[-1].rstrip(")") for line in lines[:4])


def _rows(system: str, label: str, where: str, prompts: Prompts, new_tokens: int, result: dict[str, Any],
          offsite: list[str]) -> list[dict[str, Any]]:
    from .model import row

    rows = []
    for (_, count), samples in zip(prompts, result["results"]):
        for s in samples:
            s["prefill_tps"] = count / s["ttft_s"]
        rows.append(row(system, label, where, count, new_tokens, result["load_s"], samples,
                        warm_load_s=round(result["warm_load_s"], 3), memory_bytes=result.get("memory_bytes"),
                        offsite_requests=len(offsite)))
    return rows


def run_wllama(gguf: Path, prompts: Prompts, new_tokens: int, reps: int,
               threads: tuple[int, ...] = (1, 2)) -> list[dict[str, Any]]:
    """One row per thread count and prompt."""
    if not (WLLAMA / "esm" / "index.js").is_file():
        print("wllama: skipped: node_modules/@wllama/wllama is missing (run the set-up)", file=sys.stderr)
        return []
    system = f"wllama {_version(WLLAMA)}"
    rows = []
    with _site(("wllama.html", "wllama-bench.js"), {"wllama": WLLAMA, "model.gguf": gguf}) as base:
        for n in threads:
            result, offsite = _run_page(base + "wllama.html", "typeof window.runWllama === 'function'",
                                                "([t, p, n, r]) => window.runWllama(t, p, n, r)",
                                                [n, [m for m, _ in prompts], new_tokens, reps])
            if "error" in result:
                print(f"{system} {n} thread(s): skipped: {_reason(result['error'])}", file=sys.stderr)
                continue
            label = f"{gguf.name}, {n} thread(s)" + ("" if result["isolated"] or n == 1 else " (not isolated)")
            rows += _rows(system, label, "browser-wasm", prompts, new_tokens, result, offsite)
    return rows


def run_transformers(exports: dict[str, Path], prompts: Prompts, new_tokens: int, reps: int, budget_s: float,
                     targets: tuple[tuple[str, str, int], ...] = TJS_TARGETS) -> list[dict[str, Any]]:
    """`exports`: ONNX folders by dtype (q4, fp32). One row per target and prompt; each
    generation's decoding is cut after `budget_s` seconds (the sample records its token count)."""
    if not (TRANSFORMERS / "dist" / "transformers.js").is_file() or not (ORT / "dist").is_dir():
        print("transformers.js: skipped: node_modules/@huggingface/transformers is missing (run the set-up)",
              file=sys.stderr)
        return []
    system = f"transformers.js {_version(TRANSFORMERS)}"
    rows = []
    for device, dtype, threads in targets:
        if dtype not in exports:
            print(f"{system} {device} {dtype}: skipped: no {dtype} export", file=sys.stderr)
            continue
        links = {"transformers": TRANSFORMERS / "dist", "ort": ORT / "dist", "model": exports[dtype]}
        with _site(("tjs.html", "tjs-bench.js"), links) as base:
            result, offsite = _run_page(
                base + "tjs.html", "typeof window.runTjs === 'function'",
                "([d, q, t, p, n, r, b]) => window.runTjs(d, q, t, p, n, r, b)",
                [device, dtype, threads, [m for m, _ in prompts], new_tokens, reps, budget_s], webgpu=device == "webgpu")
        if "error" in result:
            print(f"{system} {device} {dtype}: skipped: {_reason(result['error'])}", file=sys.stderr)
            continue
        label = f"{dtype} ONNX, {device}" + (f", {threads} thread(s)" if device == "wasm" else "")
        rows += _rows(system, label, f"browser-{device}", prompts, new_tokens, result, offsite)
    return rows


def run_llama_cpp(gguf: Path, prompts: Prompts, new_tokens: int, reps: int, eos: list[int],
                  threads: tuple[int, ...] = (1, 2)) -> list[dict[str, Any]]:
    """llama.cpp natively on the CPU through llama-cpp-python (the optional `llamacpp` extra),
    with the GGUF's own chat template; end-of-sequence suppressed so every run decodes the same
    number of tokens."""
    import time

    from .model import row

    try:
        import llama_cpp
    except ImportError:
        print("llama.cpp: skipped: llama-cpp-python is not installed (pip install -e '.[llamacpp]')", file=sys.stderr)
        return []
    rows = []
    for n in threads:
        loads = []
        for _ in range(2):  # the first load of this run, then again
            llm = None
            t0 = time.perf_counter()
            llm = llama_cpp.Llama(str(gguf), n_ctx=2048, n_threads=n, n_threads_batch=n, verbose=False)
            loads.append(time.perf_counter() - t0)
        results = []
        for messages, count in prompts:
            samples = []
            for _ in range(reps):
                llm.reset()
                t, first, pieces = time.perf_counter(), None, 0
                for chunk in llm.create_chat_completion(messages, max_tokens=new_tokens, temperature=0, stream=True,
                                                        logit_bias={i: -1e9 for i in eos}):
                    if chunk["choices"][0]["delta"].get("content"):
                        first = first or time.perf_counter()
                        pieces += 1
                end = time.perf_counter()
                samples.append({"ttft_s": first - t, "prefill_tps": count / (first - t),
                                "decode_tps": (pieces - 1) / (end - first) if pieces > 1 else None, "new_tokens": pieces})
            results.append(samples)
        for (_, count), samples in zip(prompts, results):
            rows.append(row(f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", f"{gguf.name}, {n} thread(s)",
                            "native-cpu", count, new_tokens, loads[0], samples, warm_load_s=round(loads[1], 3)))
    return rows

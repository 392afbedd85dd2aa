"""`lutlm bench model PACKAGE...`: load time, time to first token, prefill and decode tokens/s of
model packages on the native runtime (wgpu-py, lavapipe here; or the CPU kernels in wasmtime) and
in the web app, same prompts for every package.

Workload: fixed ChatML prompts (~40 and ~400 tokens with SmolLM2's template), greedy, a fixed
number of new tokens (end-of-sequence ignored so that every run decodes the same count), a fresh
cache per repetition; medians over repetitions, every sample kept in the JSON.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SHORT = "What is the capital of France? Answer in one sentence."
PARAGRAPH = ("The Loire is the longest river in France. It rises in the Massif Central, flows north and then "
             "west through Orleans, Tours and Angers, and reaches the Atlantic Ocean at Saint-Nazaire. Its valley "
             "is known for its castles, its vineyards and its mild climate. ")
def prompts(tokenizer: Any, template: Any, sizes: list[int]) -> dict[int, tuple[str, list[int]]]:
    """A chat prompt of about `size` tokens for each size (the user's text and the whole prompt's
    ids): the short question, or a summary request over enough repetitions of a paragraph."""
    out = {}
    for size in sizes:
        text = SHORT
        while True:
            ids = template.encode(tokenizer, [{"role": "user", "content": text}])
            if len(ids) >= size or size <= 64:
                break
            text = "Summarise in two sentences: " + PARAGRAPH * (text.count("Loire") + 1)
        out[size] = (text, ids)
    return out


async def _one(llm: Any, prompt: list[int], new_tokens: int) -> dict[str, float]:
    """One generation's times; on the CPU backend also the host's share of a decode step (the
    step's time outside the module's `run`: Python building and writing the command list)."""
    llm.reset()
    backend = llm.engine.backend
    t0 = time.perf_counter()
    first, count, busy = None, 0, 0.0
    from runtime_py.engine import Sampling

    async for _ in llm.engine.generate(prompt, new_tokens, Sampling()):
        count += 1
        if first is None:
            first, busy = time.perf_counter(), getattr(backend, "kernel_seconds", 0.0)
    end = time.perf_counter()
    out = {"ttft_s": first - t0, "prefill_tps": len(prompt) / (first - t0),
           "decode_tps": (count - 1) / (end - first) if count > 1 else float("nan"), "new_tokens": count}
    if hasattr(backend, "kernel_seconds") and count > 1:
        out["host_ms_per_token"] = 1000 * ((end - first) - (backend.kernel_seconds - busy)) / (count - 1)
    return out


def row(system: str, variant: str, where: str, prompt_tokens: int, new_tokens: int, load_s: float,
        samples: list[dict[str, float]], **extra: Any) -> dict[str, Any]:
    """One result row: median, min and max of the samples' ttft_s, prefill_tps and decode_tps (the
    medians also printed). A sample without a decode rate (one token) counts for ttft only."""
    med, spread = {}, {}
    for key in ("ttft_s", "prefill_tps", "decode_tps", "host_ms_per_token"):
        values = [s[key] for s in samples if s.get(key) is not None]
        if values:
            med[key] = round(statistics.median(values), 3)
            spread[key] = [round(min(values), 3), round(max(values), 3)]
    print(f"{system} {variant} ({where}): {prompt_tokens}-token prompt: prefill {med.get('prefill_tps', 0):.1f} tok/s, "
          f"decode {med.get('decode_tps', 0):.2f} tok/s", file=sys.stderr)
    return {"system": system, "variant": variant, "where": where, "prompt_tokens": prompt_tokens,
            "new_tokens": new_tokens, "load_s": round(load_s, 3), **med, "range": spread,
            **extra, "samples": samples, "measured": True}


def variant(manifest: dict[str, Any], name: str) -> str:
    """E.g. "3-bit lut (NAME)"; formats other than f16 scales in groups of 32 say which."""
    q = manifest["quantization"]
    fmt = "" if q.get("group") in (None, 32) else f" g{q['group']}"
    fmt += ", 8-bit scales" if q.get("scale_bits") == 8 else ""
    return f"{q.get('bits', '?')}-bit{fmt} {manifest.get('decode', 'lut')} ({name})"


def package_prompts(package: str, sizes: list[int]) -> tuple[dict[str, Any], dict[int, tuple[str, list[int]]]]:
    """A package's manifest and the benchmark prompts in its tokenizer and chat template."""
    from runtime_py.chat_template import ChatTemplate
    from runtime_py.tokenizer import Tokenizer

    manifest = json.loads((Path(package) / "manifest.json").read_text())
    tokenizer = Tokenizer(json.loads((Path(package) / "tokenizer.json").read_text()))
    return manifest, prompts(tokenizer, ChatTemplate.from_template(manifest["chat_template"]), sizes)


def run(packages: list[str], sizes: list[int], new_tokens: int, reps: int, device: str = "gpu") -> Iterator[dict[str, Any]]:
    """The workload natively (`device`: wgpu-py's GPU, or the CPU kernels in wasmtime, one thread),
    one row per package and prompt as each is measured."""
    import gc

    from lutlm import build
    from runtime_py.api import LutLM

    backend = build.backend(device)
    for pkg in packages:
        loads = []
        for _ in range(2):  # the first read of the files in this run, then again (page cache warm)
            llm = None
            gc.collect()
            if device == "cpu":  # a module per load: its memory only grows
                backend = build.backend(device)
            before = backend.allocated["bytes"]
            t0 = time.perf_counter()
            llm = LutLM.from_folder(pkg, backend)
            loads.append(time.perf_counter() - t0)
        gpu_bytes = backend.allocated["bytes"] - before
        adapter = backend.info["description"] if device == "cpu" else \
            f"{backend.info['device']}, {backend.info['description']}"
        llm.engine.eos = set()
        name = variant(llm.engine.manifest.data, Path(pkg).name)
        for size, (_, prompt) in prompts(llm.tokenizer, llm.template, sizes).items():
            samples = [asyncio.run(_one(llm, prompt, new_tokens)) for _ in range(reps)]
            yield row("lutlm", name, "native" if device == "gpu" else "native-cpu", len(prompt), new_tokens, loads[0],
                      samples, adapter=adapter,
                      warm_load_s=round(loads[1], 3), gpu_bytes=gpu_bytes)


def run_browser(packages: list[str], sizes: list[int], new_tokens: int, reps: int,
                device: str = "webgpu") -> Iterator[dict[str, Any]]:
    """The same workload through the web app in headless Chromium (SwiftShader WebGPU): a cold
    load (download into the Cache API) and the chats, then a warm load in the browser started again
    on the same profile; a package's rows as soon as it is measured."""
    import tempfile

    from lutlm import webapp
    from lutlm.headless import AppPage, chromium

    from .browser import memory_bytes

    with tempfile.TemporaryDirectory(prefix="lutlm-bench-web-") as tmp, \
            tempfile.TemporaryDirectory(prefix="lutlm-bench-profiles-") as profiles, \
            webapp.serving(webapp.build(Path(tmp), [Path(p) for p in packages])) as url:
        for pkg in packages:
            name = Path(pkg).name
            manifest, texts = package_prompts(pkg, sizes)
            offsite: list[str] = []
            profile = Path(profiles) / name
            with chromium(offsite, profile=profile) as context:
                app = AppPage(context.new_page(), url)
                load_s = app.load(name, device=device)  # not "auto", which takes the CPU over SwiftShader
                info = app.page.evaluate("window.loadInfo")
                a = info["adapter"]  # a GPU adapter's names, or the CPU kernels' "WebAssembly SIMD (...), 1 thread"
                adapter = a["description"] if a.get("backend") == "cpu" else f"{a['vendor']} {a['description']}".strip()
                measured = []
                for size, (text, ids) in texts.items():
                    samples = []
                    for _ in range(reps):
                        app.new_chat()
                        _, usage = app.ask(text, {"temperature": 0, "max_tokens": new_tokens, "ignore_eos": True})
                        samples.append({"ttft_s": usage["ttft_s"], "prefill_tps": len(ids) / usage["ttft_s"],
                                        "decode_tps": usage["decode_tokens_per_s"], "new_tokens": usage["completion_tokens"],
                                        **({"host_ms_per_token": usage["host_ms_per_token"]}
                                           if "host_ms_per_token" in usage else {})})
                    measured.append((ids, samples))
                memory = memory_bytes(app.page)
                wasm = app.page.evaluate("window.wasmBytes")
            # warm: the browser started again on the same profile, the model read from its Cache API
            # (only the load: after it, SwiftShader's compositor stalls in a relaunched profile here)
            with chromium(offsite, profile=profile) as context:
                warm_s = AppPage(context.new_page(), url).load(name, device=device)
            for ids, samples in measured:
                yield row("lutlm", variant(manifest, name), f"browser-{device}", len(ids), new_tokens, load_s, samples,
                          adapter=adapter, warm_load_s=round(warm_s, 3), gpu_bytes=info.get("gpu_bytes"),
                          memory_bytes=memory, wasm_bytes=wasm, offsite_requests=len(offsite))


def main(packages: list[str], sizes: list[int], new_tokens: int, reps: int, json_path: str | None,
         where: list[str], command: list[str]) -> None:
    from . import report

    rows = []
    if "native" in where:
        rows += run(packages, sizes, new_tokens, reps)
    if "cpu" in where:
        rows += run(packages, sizes, new_tokens, reps, device="cpu")
    if "browser" in where:
        rows += run_browser(packages, sizes, new_tokens, reps)
    if "browser-cpu" in where:
        rows += run_browser(packages, sizes, new_tokens, reps, device="cpu")
    report.write(rows, Path(json_path) if json_path else None, None, command)

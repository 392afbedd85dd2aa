"""Peers measured in the same run as lutlm: llama.cpp in wasm (npm @wllama/wllama) in headless
Chromium, on the GGUF the lutlm packages were compiled from, with the same chat prompts."""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_wllama(gguf: Path, prompts: list[tuple[list[dict[str, str]], int]], new_tokens: int, reps: int,
               threads: tuple[int, ...] = (1, 2)) -> list[dict[str, Any]]:
    """`prompts`: (messages, prompt token count) pairs. One row per thread count and prompt."""
    from lutlm import webapp

    from .browser import chromium
    from .model import row

    package = ROOT / "node_modules" / "@wllama" / "wllama"
    if not (package / "esm" / "index.js").is_file():
        print("wllama: skipped: node_modules/@wllama/wllama is missing (run the set-up)", file=sys.stderr)
        return []
    rows = []
    with tempfile.TemporaryDirectory(prefix="lutlm-wllama-") as tmp:
        site = Path(tmp)
        for name in ("wllama.html", "wllama-bench.js"):
            (site / name).write_bytes((Path(__file__).parent / "web" / name).read_bytes())
        (site / "wllama").symlink_to(package, target_is_directory=True)
        (site / "model.gguf").symlink_to(gguf.resolve())
        srv = webapp.server(site)  # sends COOP/COEP: multi-threaded wasm needs cross-origin isolation
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        try:
            for n in threads:
                offsite: list[str] = []
                with chromium(offsite) as context:
                    page = context.new_page()
                    page.goto(f"http://127.0.0.1:{srv.server_address[1]}/wllama.html")
                    page.wait_for_function("typeof window.runWllama === 'function'")
                    result = page.evaluate("([t, p, n, r]) => window.runWllama(t, p, n, r)",
                                           [n, [m for m, _ in prompts], new_tokens, reps])
                if "error" in result:
                    print(f"wllama {n} thread(s): skipped: {result['error'].splitlines()[0]}", file=sys.stderr)
                    continue
                for (messages, count), samples in zip(prompts, result["results"]):
                    for s in samples:
                        s["prefill_tps"] = count / s["ttft_s"]
                    label = f"{gguf.name}, {n} thread(s)" + ("" if result["isolated"] or n == 1 else " (not isolated)")
                    rows.append(row("wllama 3.8.1", label, "browser-wasm", count, new_tokens, result["load_s"], samples,
                                    offsite_requests=len(offsite)))
        finally:
            srv.shutdown()
            srv.server_close()
    return rows

"""`lutlm bench`: the whole comparison in one command, on one model and one machine.

It compiles the lutlm variants it needs (cached under build/bench/), exports the same weights to
ONNX for transformers.js, then measures every system on the same chat prompts: lutlm natively
(wgpu-py; and its CPU kernels in wasmtime) and in headless Chromium (SwiftShader WebGPU), wllama (llama.cpp wasm) and
transformers.js (WebGPU, wasm) in Chromium, and llama.cpp natively when llama-cpp-python is
installed. A system that cannot run is skipped with a message.

Variants are compiled with round-to-nearest: speed depends on the layout (bits, group, decode
kernel), not on how the codes were chosen, and RTN 4-bit reproduces the shipped Q4_1 exactly.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lutlm import build
from lutlm.assets import DEFAULT_MODEL, resolve_source
from lutlm.errors import LutlmError
from lutlm.quant.pipeline import Request

# name: (the quantisation, the decode matmul); every one round to nearest (see above)
VARIANTS: dict[str, tuple[Request, str]] = {
    "q4-lut": (Request("4", method="rtn"), "lut"),
    "q3-lut": (Request("3", method="rtn"), "lut"),
    "q3g16-lut": (Request("3", group=16, scale_bits=8, method="rtn"), "lut"),
    "q2-lut": (Request("2", method="rtn"), "lut"),
    "mixed-lut": (Request("mixed", budget=3.0, method="rtn"), "lut"),
    "mixed-d8-lut": (Request("mixed", budget=2.5, scale_bits=8, method="rtn"), "lut"),
    "q4-dequant": (Request("4", method="rtn"), "dequant"),
    "q4-dequant8": (Request("4", method="rtn"), "dequant8"),
}
SYSTEMS = ("lutlm-native", "lutlm-cpu", "lutlm-browser", "lutlm-browser-cpu", "wllama", "transformers.js", "llama.cpp")
EXPORTS = ("q4", "fp32")


def _current(out: Path, marker: str) -> bool:
    """Whether `out` holds `marker` written by the same compiler sources (a package from older
    kernel code would be measured as if it were current)."""
    from lutlm.package import compiler_digest

    try:
        return json.loads((out / marker).read_text(encoding="utf-8")).get("compiler") == compiler_digest()
    except (OSError, ValueError):
        return False


def _stem(source: str) -> str:
    """A folder-name stem for SOURCE: the asset name, or the file / folder name of a path."""
    return Path(source).stem.lower() if "/" in source or source.endswith(".gguf") else source


def default_out(source: str) -> Path:
    """Where a run's tables go unless --out says: results/bench for the default model, a folder of
    its own for any other SOURCE, so that a run on a test model never replaces the published one."""
    return Path("results/bench") if source == DEFAULT_MODEL else Path(f"results/bench-{_stem(source)}")


def packages(source: str, path: Path, variants: list[str], cache: Path) -> list[Path]:
    """The variants' packages of SOURCE (read from `path`, where it resolved), compiled into `cache`
    unless they are there."""
    out = {v: cache / f"{_stem(source)}-{v}" for v in variants}
    for v, folder in out.items():
        if not _current(folder, "manifest.json"):
            print(f"bench: compiling {v} into {folder}", file=sys.stderr)
            build.compile_package(folder, path, *VARIANTS[v], build.on_stderr())
    return [out[v] for v in variants]


def exports(source: str, path: Path, cache: Path) -> dict[str, Path]:
    """SOURCE (read from `path`) at 4 bits exported to ONNX in each dtype, into `cache` unless they
    are there."""
    out = {d: cache / f"{_stem(source)}-onnx-{d}" for d in EXPORTS}
    for d, folder in out.items():
        if not _current(folder, "lutlm-export.json"):
            print(f"bench: exporting {d} into {folder}", file=sys.stderr)
            build.export_onnx(folder, path, Request("4", method="rtn"), d, build.on_stderr())
    return out


def parse_list(value: str | None, allowed: tuple[str, ...] | dict[str, Any], what: str) -> list[str]:
    """The names in a comma-separated option's value, each one of `allowed` (None: all of them)."""
    if value is None:
        return list(allowed)
    items = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in items if v not in allowed]
    if not items or unknown:
        raise LutlmError(f"{what} takes a comma-separated list of {', '.join(allowed)}, not {value!r}")
    return items


def _rows(source: str, gguf: Path, pkgs: list[Path], systems: list[str], sizes: list[int], new_tokens: int, reps: int,
          budget_s: float, cache: Path) -> Iterator[dict[str, Any]]:
    """The run's rows in order, each as soon as it is measured (a lutlm package's, a peer's), so
    that a run stopped part way keeps everything it finished."""
    from . import model, peers

    paths = [str(p) for p in pkgs]
    if "lutlm-native" in systems:
        yield from model.run(paths, sizes, new_tokens, reps)
    if "lutlm-cpu" in systems:
        yield from model.run(paths, sizes, new_tokens, reps, device="cpu")
    if "lutlm-browser" in systems:
        yield from model.run_browser(paths, sizes, new_tokens, reps)
    if "lutlm-browser-cpu" in systems:
        yield from model.run_browser(paths, sizes, new_tokens, reps, device="cpu")
    manifest, texts = model.package_prompts(paths[0], sizes)
    chats = [([{"role": "user", "content": text}], len(ids)) for text, ids in texts.values()]
    if {"wllama", "llama.cpp"} & set(systems) and gguf.suffix != ".gguf":
        print(f"wllama, llama.cpp: skipped: {source} is not a GGUF file", file=sys.stderr)
    elif gguf.suffix == ".gguf":
        if "wllama" in systems:
            yield from peers.run_wllama(gguf, chats, new_tokens, reps)
        if "llama.cpp" in systems:
            yield from peers.run_llama_cpp(gguf, chats, new_tokens, reps, manifest["eos_ids"])
    if "transformers.js" in systems:
        yield from peers.run_transformers(exports(source, gguf, cache), chats, new_tokens, reps, budget_s)


def main(source: str, variants: list[str], systems: list[str], sizes: list[int], new_tokens: int, reps: int,
         budget_s: float, cache: Path, json_path: Path | None, out_dir: Path | None, command: list[str]) -> None:
    """Measure everything, then write the report. Stopped by Ctrl-C or SIGTERM (a run of every
    system takes hours on a slow machine), it writes the rows it finished, marked as a stopped run,
    and exits 130."""
    from . import report

    path = resolve_source(source)  # once: a fetched model's sha256 is checked each time it is resolved
    pkgs = packages(source, path, variants, cache)
    rows: list[dict[str, Any]] = []
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        for row in _rows(source, path, pkgs, systems, sizes, new_tokens, reps, budget_s, cache):
            rows.append(row)
    except KeyboardInterrupt:
        if rows:
            print(f"\nbench: stopped; writing what was measured before that ({len(rows)} row{'s' * (len(rows) != 1)})",
                  file=sys.stderr)
            report.write(rows, json_path, out_dir, command, stopped=True)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    report.write(rows, json_path, out_dir, command)

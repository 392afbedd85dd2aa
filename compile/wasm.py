"""Build the hand-written CPU kernels (`shaders/cpu/*.c`) into one WebAssembly module per SIMD level.

Freestanding wasm32 (no libc, no emscripten) with Debian's clang 19 and its wasm-ld, which
`make setup` installs: clang 14 emits a pre-standard opcode for the relaxed swizzle. The flags
are fixed and the output is named by a hash of the sources, the flags and the compiler's
version, so a build is reproducible and done once per change, into lutlm's cache (never into the
repository). The module exports its own memory and a bump allocator (`alloc`, `reset`); the same
`.wasm` runs natively in wasmtime and in a browser.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .assets import cache_dir
from .errors import LutlmError

SOURCES = Path(__file__).resolve().parent.parent / "shaders" / "cpu"
CLANG = "clang-19"
WASM_LD = "wasm-ld-19"

# Relaxed SIMD is in Chromium 114+ and Firefox 146+, not Safari, and a module with one relaxed
# instruction fails to compile where it is unsupported: the host feature-detects and picks a build.
LEVELS: dict[str, tuple[str, ...]] = {
    "simd128": ("-msimd128",),
    "relaxed": ("-msimd128", "-mrelaxed-simd"),
}
# No libc (memset/memcpy become memory.fill/copy with bulk memory), no fused multiply-adds (the
# numpy model of the table rounding must see the same float operations), exports by name only.
CFLAGS = ("--target=wasm32", "-O3", "-nostdlib", "-fno-math-errno", "-ffp-contract=off", "-mbulk-memory",
          "-fvisibility=hidden", "-Wall", "-Werror")
LDFLAGS = ("--no-entry", "--export-dynamic", "--strip-all")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise LutlmError(f"{name} is not installed (the CPU kernels need clang 19 and lld 19): run make setup")
    return path


def _sources() -> list[Path]:
    found = sorted(SOURCES.glob("*.c")) + sorted(SOURCES.glob("*.h"))
    if not any(p.suffix == ".c" for p in found):
        raise LutlmError(f"no CPU kernel sources in {SOURCES}")
    return found


def _digest(level: str, sources: list[Path], clang: str, wasm_ld: str) -> str:
    """Hash of what decides the module's bytes: sources, flags, compiler and linker versions."""
    h = hashlib.sha256()
    for part in (level, *LEVELS[level], *CFLAGS, *LDFLAGS):
        h.update(part.encode() + b"\0")
    for tool in (clang, wasm_ld):
        h.update(subprocess.run([tool, "--version"], capture_output=True, check=True).stdout)
    for src in sources:
        h.update(src.name.encode() + b"\0" + src.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def build(level: str = "simd128") -> Path:
    """Path of the module for SIMD `level` (a key of LEVELS), compiled first if not cached."""
    if level not in LEVELS:
        raise LutlmError(f"unknown SIMD level {level!r}; known: {', '.join(LEVELS)}")
    clang, wasm_ld = _tool(CLANG), _tool(WASM_LD)
    sources = _sources()
    target = cache_dir() / "wasm" / f"lutlm-cpu-{level}-{_digest(level, sources, clang, wasm_ld)}.wasm"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        objects = []
        for src in (s for s in sources if s.suffix == ".c"):
            obj = Path(tmp) / f"{src.stem}.o"
            _run([clang, *CFLAGS, *LEVELS[level], "-c", str(src), "-o", str(obj)])
            objects.append(str(obj))
        out = Path(tmp) / target.name
        _run([wasm_ld, *LDFLAGS, *objects, "-o", str(out)])
        os.replace(out, target)
    return target


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LutlmError(f"{Path(cmd[0]).name} failed on the CPU kernels:\n{proc.stderr.strip()}")

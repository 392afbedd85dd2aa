"""The compile pipeline as plain functions: read a model source, quantise it (in memory or to a
folder), compile a model package, export ONNX, and open a package on the GPU.

The command line (lutlm.cli), the benchmark harness (lutlm_bench) and tests all call these, so
each step is written once. Nothing here prints: long work reports to the `Progress` its caller
gives (silent by default; the CLI's writes to stderr). Heavy modules (numpy, TVM, the runtime)
are imported when a function needs them, so that importing this costs the CLI's `--help` nothing.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator

from .assets import resolve_source
from .errors import LutlmError

if TYPE_CHECKING:
    from runtime_py import Tokenizer
    from runtime_py.api import LutLM

    from .checkpoint import Checkpoint
    from .quant.format import QTensor
    from .quant.pipeline import Request

Report = Callable[[str], None]
Quantized = tuple["Checkpoint", dict[str, "QTensor"], dict[str, Any]]

# what a quantised checkpoint's quantized.json says of how it was made, carried into a package
STORED_INFO = ("method", "bits", "group", "scale_bits", "budget", "embed_bits", "tune", "bpw_linear", "bpw_embedding",
               "mix", "seconds")


@contextlib.contextmanager
def _silent_stage(name: str) -> Iterator[Report]:
    yield lambda msg: None


@dataclass(frozen=True)
class Progress:
    """Where long work reports: `note` takes one-off lines (the file being loaded, what
    quantisation chose), `stage(name)` opens a named step whose reporter takes its running
    messages (lutlm.progress.status has this shape)."""

    note: Report = lambda msg: None
    stage: Callable[[str], ContextManager[Report]] = _silent_stage


SILENT = Progress()


def on_stderr() -> Progress:
    """Notes as lines on stderr, stages as lutlm.progress.status lines: what a person running a
    command watches (the CLI, the benchmark harness)."""
    from .progress import status

    return Progress(lambda msg: print(msg, file=sys.stderr), status)


def is_package(path: str | Path) -> bool:
    """Whether `path` is a model package folder (a quantised checkpoint has a manifest.json too)."""
    path = Path(path)
    return (path / "manifest.json").is_file() and not (path / "quantized.json").is_file()


def package(path: str | Path) -> Path:
    """`path` as a model package folder, or the error that says it is not one."""
    if not is_package(path):
        raise LutlmError(f"{path}: not a model package (make one with `lutlm compile`)")
    return Path(path)


DEVICES = ("gpu", "cpu")


def open_package(path: Path, ctx: int | None = None, progress: Progress = SILENT, device: str = "gpu") -> LutLM:
    """A model package loaded by the runtime, its KV cache sized for `ctx` tokens (None: the
    runtime's default), every file checked against the manifest: on the native GPU (wgpu) or, with
    `device="cpu"`, on the WebAssembly SIMD kernels in wasmtime (the browser's CPU path, natively)."""
    from runtime_py.api import LutLM

    progress.note(f"loading {path}")
    return LutLM.from_folder(str(path), backend(device), ctx)


def backend(device: str) -> Any:
    """The runtime backend of `device` ("gpu": wgpu-py; "cpu": the CPU kernels in wasmtime, built
    first if the cache lacks them)."""
    if device == "gpu":
        from runtime_py.gpu_wgpu import WgpuBackend

        return WgpuBackend()
    if device == "cpu":
        from runtime_py.cpu import CpuBackend
        from runtime_py.cpu_wasmtime import WasmtimeModule

        from . import wasm

        return CpuBackend(WasmtimeModule({level: str(wasm.build(level)) for level in wasm.LEVELS}))
    raise LutlmError(f"unknown device {device!r}; known: {', '.join(DEVICES)}")


def load(source: str | Path, tensors: bool = True, progress: Progress = SILENT) -> Checkpoint:
    """A model SOURCE (a GGUF file, a Hugging Face or quantised checkpoint folder, or a known
    model's name, fetched on first use) read and validated. With `tensors=False` only its config,
    tokenizer and chat template are read (fast: no weights)."""
    from .intake import load_checkpoint

    path = resolve_source(str(source))
    if tensors:
        progress.note(f"loading {path}")
    return load_checkpoint(path, tensors=tensors)


def tokenizer(ckpt: Checkpoint) -> Tokenizer:
    """The runtime's pure-Python tokenizer for a checkpoint: the one intake built to check the
    checkpoint's, else built now."""
    from runtime_py import Tokenizer

    return ckpt.runtime_tokenizer or Tokenizer(ckpt.tokenizer)


def quantize(source: str | Path, request: Request, progress: Progress = SILENT) -> Quantized:
    """Quantise a model SOURCE as `request` says (checked before the model is read). Returns the
    checkpoint (with the norm gains tuning trained, if it did), the quantised tensors and the
    statistics quantized.json and a package's manifest record."""
    from .perplexity import load_text
    from .quant.pipeline import calibration_windows, quantize as quantize_tensors

    request.validate()
    ckpt = load(source, progress=progress)
    calib = None
    if request.needs_calibration:
        encode = tokenizer(ckpt).encode
        texts = {name: load_text(name) for name in request.calib_texts}
        calib = calibration_windows(texts, encode, request.calib_windows, request.window)
    with progress.stage("quantize") as report:
        quantized, gains, info = quantize_tensors(ckpt, request, calib, log=report)
    return replace(ckpt, tensors=ckpt.tensors | gains), quantized, info


def quantize_to(out: Path, source: str | Path, request: Request, progress: Progress = SILENT) -> dict[str, Any]:
    """`lutlm quantize`: quantise and write a quantised checkpoint folder at `out`; returns the
    statistics. An `out` lutlm may not replace is refused before any work."""
    from .intake import quantized as stored

    stored.OUTPUT.check_output(out)
    ckpt, tensors, info = quantize(source, request, progress)
    stored.write(out, ckpt, tensors, info)
    return info


def quantized_source(source: str | Path, request: Request, progress: Progress = SILENT) -> Quantized:
    """A quantised checkpoint folder read as it was written (`request` does not apply), or any
    other SOURCE quantised now as `request` says."""
    from .intake import quantized as stored

    path = resolve_source(str(source))
    if not stored.is_quantized(path):
        return quantize(path, request, progress)
    from .validate import read_json_object

    ckpt, tensors = stored.read(path)
    ckpt.validate()  # every tensor present, shaped as the config says, finite
    made = read_json_object(path / stored.MANIFEST)
    return ckpt, tensors, {"from": path.name, **{k: made[k] for k in STORED_INFO if k in made}}


def compile_package(out: Path, source: str | Path, request: Request, decode: str = "lut",
                    progress: Progress = SILENT) -> dict[str, Any]:
    """`lutlm compile`: a model package at `out` from a quantised checkpoint, or from any other
    SOURCE quantised now; `decode` picks the decode matmul (lut, dequant or dequant8). Returns its
    manifest. An `out` lutlm may not replace is refused before any work."""
    from .package import OUTPUT, write
    from .quant.pipeline import summary

    OUTPUT.check_output(out)
    ckpt, quantized, info = quantized_source(source, request, progress)
    if "mix" in info:
        progress.note(summary(info))
    with progress.stage("compile") as report:
        return write(out, ckpt, quantized, info, progress=report, decode=decode)


def export_onnx(out: Path, source: str | Path, request: Request, dtype: str = "q4",
                progress: Progress = SILENT) -> Path:
    """`lutlm export onnx`: the quantised weights as an ONNX decoder folder for transformers.js,
    as MatMulNBits 4-bit (`dtype` q4) or dequantised fp32. An `out` lutlm may not replace is
    refused before any work."""
    from .onnx_export import DTYPES, OUTPUT, export

    if dtype not in DTYPES:
        raise LutlmError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    OUTPUT.check_output(out)
    ckpt, quantized, _ = quantized_source(source, request, progress)
    with progress.stage("export") as report:
        return export(out, ckpt, quantized, dtype, progress=report)

"""Write a model package: the only thing compile/ hands to runtime_py/.

    NAME/manifest.json   format + version, config, per-tensor quantisation, the tokenizer and shards
                         (file, bytes, sha256), tensors (shard, offset, bytes, dtype, shape), kernels
                         (WGSL file, bytes, sha256 + launch metadata), activation buffers (byte sizes
                         as expressions), plans; no path of the machine that built it
    NAME/tokenizer.json  Hugging Face format
    NAME/kernels/*.wgsl
    NAME/shards/*.bin    at most SHARD_BYTES each (a larger tensor gets a shard of its own)

Weights are stored in the GPU layouts (`kernels.layout`); q/k/v and gate/up are fused into one
matrix per layer when they share a spec. Written into a temporary sibling folder and renamed into
place when complete, so an interrupted compile leaves no package behind.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
from runtime_py.package import FORMAT, NAME, VERSION, PackageError, folder_reader, read_manifest, read_tokenizer

from .atomic import OutputKind
from .checkpoint import Checkpoint
from .errors import LutlmError
from .kernels import layout
from .models import architecture
from .plan import CHUNK, DECODE, build, dense_bits, dense_only, fused_groups
from .quant.format import QTensor

SHARD_BYTES = 32 << 20
OUTPUT = OutputKind("model package", "manifest.json", FORMAT, frozenset({"manifest.json", "tokenizer.json", "kernels", "shards"}),
                    name=NAME)  # the manifest records the folder's name as the package's


def _fuse(parts: list[QTensor]) -> QTensor:
    steps = None if parts[0].steps is None else np.concatenate([q.steps for q in parts])
    return QTensor(parts[0].spec, np.concatenate([q.codes for q in parts]), np.concatenate([q.scale for q in parts]),
                   np.concatenate([q.minimum for q in parts]), steps)


def gpu_tensors(ckpt: Checkpoint, quantized: dict[str, QTensor], decode: str = "lut") -> tuple[dict[str, np.ndarray], dict, dict, str]:
    """The arrays to upload (NAME.planes / NAME.sm per weight, f32 norms; NAME.dense too when
    decode dequantises, NAME.dense instead of planes for 8-bit codes), with the specs and shapes
    of the GPU weights and the output head's name."""
    c, arch = ckpt.config, architecture(ckpt.config.architecture)
    missing = [n for n in [*arch.embeddings(c), *arch.linear_names(c)] if n not in quantized]
    if missing:
        raise LutlmError(f"not quantised: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    formats = {q.spec for q in quantized.values()}
    unsupported = sorted(s.name for s in formats if s.group == 16 and s.scale_bits != 8)
    if unsupported:
        raise LutlmError(f"the GPU kernels read groups of 16 with 8-bit scales only, not {', '.join(unsupported)}; "
                         "such a checkpoint can be evaluated (lutlm eval ppl) but not compiled")
    if decode != "lut" and any(s.scale_bits == 8 for s in formats):
        raise LutlmError("the dequantise baseline (--decode dequant) reads f16 scales; 8-bit scales decode with the LUT GEMV")
    weights: dict[str, QTensor] = {arch.EMBEDDING: quantized[arch.EMBEDDING]}
    head = arch.EMBEDDING if c.tied_embeddings else arch.OUTPUT
    weights[head] = quantized[head]
    specs = {n: q.spec for n, q in quantized.items()}
    for layer in range(c.n_layer):
        for name, parts in fused_groups(c, specs, layer).items():
            weights[name] = _fuse([quantized[p] for p in parts]) if len(parts) > 1 else quantized[parts[0]]
    arrays: dict[str, np.ndarray] = {}
    for name, q in weights.items():
        if not dense_only(q.spec):
            arrays[name + ".planes"] = layout.planes(q)
        arrays[name + ".sm"] = layout.scale_min(q)
        if decode != "lut" or dense_only(q.spec):
            arrays[name + ".dense"] = layout.dense(q, dense_bits(q.spec))
    for name in c.norm_names():
        arrays[name] = np.ascontiguousarray(ckpt.tensors[name], dtype=np.float32)
    return arrays, {n: q.spec for n, q in weights.items()}, {n: q.codes.shape for n, q in weights.items()}, head


@functools.cache
def compiler_digest() -> str:
    """sha256 of this compiler's Python sources. Packages and exports record it, so that a cache
    of them (`lutlm bench`) can tell one written by older kernel, plan or quantiser code. Read
    once per process: it describes the code this process runs."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def write(out: Path, ckpt: Checkpoint, quantized: dict[str, QTensor], info: dict[str, Any],
          progress: Callable[[str], None] = lambda msg: None, decode: str = "lut") -> dict[str, Any]:
    out = Path(out)
    OUTPUT.check_output(out)
    if decode not in DECODE:
        raise LutlmError(f"decode matmul must be one of {', '.join(DECODE)}, not {decode!r}")
    progress("generating kernels")
    arrays, specs, shapes, head = gpu_tensors(ckpt, quantized, decode)
    plan = build(ckpt.config, specs, shapes, head, decode)
    with OUTPUT.replacing(out) as tmp:
        (tmp / "kernels").mkdir()
        (tmp / "shards").mkdir()
        kernels = {kid: {k: v for k, v in meta.items() if k not in ("wgsl", "name")}
                   | _write_file(tmp, f"kernels/{kid}.wgsl", meta["wgsl"].encode("utf-8"))
                   for kid, meta in plan.kernels.items()}
        progress("writing shards")
        shards, tensors = _write_shards(tmp, arrays)
        tokenizer = _write_file(tmp, "tokenizer.json", json.dumps(ckpt.tokenizer, ensure_ascii=False).encode("utf-8"))
        c = ckpt.config
        manifest = {
            "format": FORMAT, "version": VERSION, "name": out.name, "source": Path(ckpt.source).name,
            "compiler": compiler_digest(), "config": asdict(c), "chat_template": ckpt.chat_template,
            "eos_ids": sorted({i for i in (c.eos_id, _token_id(ckpt.tokenizer, "<|im_end|>"),
                                          _token_id(ckpt.tokenizer, "<|endoftext|>")) if i is not None}),
            "quantization": {**info, "tensors": {n: s.name for n, s in specs.items()}},
            "decode": decode, "chunk": CHUNK, "max_ctx": c.n_ctx, "rope": {"theta": c.rope_theta, "pairs": c.n_rot // 2},
            "tokenizer": tokenizer, "shards": shards, "tensors": tensors, "kernels": kernels, "buffers": plan.buffers,
            "plans": plan.plans,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _check_loads(tmp)
    return manifest


def _check_loads(folder: Path) -> None:
    """Refuse to finish a package the runtime would refuse (its manifest and tokenizer checks), so
    that compile never succeeds on a source the runtime then turns away."""
    read = folder_reader(str(folder))
    try:
        read_tokenizer(read_manifest(read), read)
    except PackageError as exc:
        raise LutlmError(f"the runtime would not load this package: {exc}") from None


def _write_file(folder: Path, rel: str, data: bytes) -> dict[str, Any]:
    """Write a file of the package; returns the manifest's reference to it."""
    (folder / rel).write_bytes(data)
    return {"file": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _token_id(tokenizer: dict[str, Any], text: str) -> int | None:
    for tok in tokenizer.get("added_tokens", []):
        if tok.get("content") == text:
            return int(tok["id"])
    return None


def _write_shards(folder: Path, arrays: dict[str, np.ndarray]) -> tuple[list[dict], dict[str, dict]]:
    """The arrays in shards of at most SHARD_BYTES under folder/shards (a larger array gets one of its own)."""
    shards: list[dict[str, Any]] = []
    tensors: dict[str, dict[str, Any]] = {}
    current: list[bytes] = []
    size = 0

    def flush() -> None:
        nonlocal current, size
        if not current:
            return
        shards.append(_write_file(folder, f"shards/{len(shards):03d}.bin", b"".join(current)))
        current, size = [], 0

    for name, arr in arrays.items():
        data = np.ascontiguousarray(arr).tobytes()
        if size and size + len(data) > SHARD_BYTES:
            flush()
        tensors[name] = {"shard": len(shards), "offset": size, "bytes": len(data),
                         "dtype": {np.dtype(np.uint32): "u32", np.dtype(np.float32): "f32"}[arr.dtype],
                         "shape": list(arr.shape)}
        current.append(data)
        size += len(data)
    flush()
    return shards, tensors

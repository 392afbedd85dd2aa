"""The quantised checkpoint on disk: a folder that `lutlm eval ppl` (and later `lutlm compile`) reads.

    quantized.json       format and version, model config, per-tensor spec, method and statistics
    tokenizer.json       Hugging Face format, as the runtime reads it
    weights.safetensors  NAME.planes (u32 bit-planes), NAME.scale / NAME.min (f16; with 8-bit
                         scales u8 codes of scale and -minimum and NAME.steps, (rows, 2) f16),
                         norms as f32

Codes are stored in the bit-plane layout the LUT kernels read, so file size follows bits per weight.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import OutputKind
from ..checkpoint import Checkpoint, ModelConfig
from ..errors import LutlmError
from .format import QTensor, QuantSpec, StepGrid
from .packing import pack_bitplanes, unpack_bitplanes

FORMAT = "lutlm-quantized"
VERSION = 1
MANIFEST = "quantized.json"
OUTPUT = OutputKind("quantised checkpoint", MANIFEST, FORMAT,
                    frozenset({MANIFEST, "tokenizer.json", "weights.safetensors"}))


def is_quantized(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def write(out: Path, ckpt: Checkpoint, quantized: dict[str, QTensor], info: dict[str, Any]) -> None:
    """Write atomically: into a temporary sibling folder, renamed into place when complete."""
    from safetensors.numpy import save_file

    with OUTPUT.replacing(Path(out)) as tmp:
        arrays: dict[str, np.ndarray] = {}
        tensors: dict[str, Any] = {}
        for name, value in ckpt.tensors.items():
            q = quantized.get(name)
            if q is None:
                arrays[name] = value.astype(np.float32, copy=False)
                tensors[name] = {"kind": "float", "shape": list(value.shape)}
                continue
            arrays[name + ".planes"] = pack_bitplanes(q.codes, q.spec.bits)
            if q.steps is not None:
                arrays[name + ".scale"], arrays[name + ".min"] = StepGrid.of(q.steps).codes(q.scale, q.minimum)
                arrays[name + ".steps"] = q.steps
            else:
                arrays[name + ".scale"] = q.scale
                if not q.spec.ternary:
                    arrays[name + ".min"] = q.minimum
            tensors[name] = {"kind": "quantized", "shape": list(q.codes.shape), "bits": q.spec.bits,
                             "group": q.spec.group, "ternary": q.spec.ternary,
                             "symmetric": q.spec.symmetric, "scale_bits": q.spec.scale_bits}
        # safetensors writes an array's memory as it lies, ignoring strides: make every one C-ordered
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / "weights.safetensors"))
        (tmp / "tokenizer.json").write_text(json.dumps(ckpt.tokenizer, ensure_ascii=False), encoding="utf-8")
        manifest = {"format": FORMAT, "version": VERSION, "config": asdict(ckpt.config),
                    "chat_template": ckpt.chat_template, "source": Path(ckpt.source).name, "tensors": tensors, **info}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")


def read(folder: Path, with_tensors: bool = True) -> tuple[Checkpoint, dict[str, QTensor]]:
    """The checkpoint with dequantised fp32 tensors, and the quantised tensors themselves
    (neither, with `with_tensors=False`: config, tokenizer and template only)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LutlmError(f"{folder}: damaged quantised checkpoint ({exc})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise LutlmError(f"{folder}: quantised checkpoint format {manifest.get('format')!r} version "
                         f"{manifest.get('version')!r}; this lutlm reads {FORMAT!r} version {VERSION}")
    config = ModelConfig(**manifest["config"])
    if not with_tensors:
        return Checkpoint(config, {}, tokenizer, manifest.get("chat_template"), str(folder)), {}
    try:
        arrays = load_file(str(folder / "weights.safetensors"))
    except (OSError, SafetensorError) as exc:
        raise LutlmError(f"{folder}/weights.safetensors: unreadable ({exc})") from None
    tensors: dict[str, np.ndarray] = {}
    quantized: dict[str, QTensor] = {}
    types: dict[str, str] = {}
    try:
        for name, meta in manifest["tensors"].items():
            if meta["kind"] == "float":
                tensors[name] = arrays[name]
                types[name] = "F32"
                continue
            spec = QuantSpec(meta["bits"], meta["group"], meta["ternary"], meta["symmetric"],
                             meta.get("scale_bits", 16))
            codes = unpack_bitplanes(arrays[name + ".planes"])
            scale = arrays[name + ".scale"]
            minimum = -scale if spec.ternary else arrays[name + ".min"]
            steps = arrays[name + ".steps"] if spec.scale_bits == 8 else None
            if steps is not None:
                scale, minimum = StepGrid.of(steps).values(scale, minimum)
            q = QTensor(spec, codes, scale, minimum, steps)
            if list(codes.shape) != meta["shape"]:
                raise LutlmError(f"{folder}: tensor {name} has shape {codes.shape}, manifest says {meta['shape']}")
            quantized[name] = q
            tensors[name] = q.dequantize()
            types[name] = spec.name
    except KeyError as exc:
        raise LutlmError(f"{folder}: weights.safetensors lacks {exc.args[0]}") from None
    ckpt = Checkpoint(config, tensors, tokenizer, manifest.get("chat_template"), str(folder), types)
    return ckpt, quantized

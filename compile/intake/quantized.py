"""The quantised checkpoint on disk: the folder `lutlm quantize` writes and every command taking a SOURCE reads.

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
from ..checkpoint import Checkpoint, ModelConfig, check_tokenizer
from ..errors import LutlmError
from ..quant.format import QTensor, QuantSpec, StepGrid
from ..quant.packing import pack_bitplanes, unpack_bitplanes
from ..validate import boolean, integer, json_type, read_json_object, show, string
from .safetensors import Safetensors

FORMAT = "lutlm-quantized"
VERSION = 1
MANIFEST = "quantized.json"
MAX_DIM = 1 << 24  # a tensor dimension (vocabularies reach 2^21)
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
    (neither, with `with_tensors=False`: config, tokenizer and template only).

    Every field of quantized.json is checked (the config against the one schema), then the
    tokenizer against the vocabulary, then every array's dtype and shape in the weights' header
    against what the manifest implies, all before a tensor is read."""
    manifest_path, tok_path = folder / MANIFEST, folder / "tokenizer.json"
    manifest = read_json_object(manifest_path)
    version = manifest.get("version")
    if manifest.get("format") != FORMAT or type(version) is not int or version != VERSION:
        raise LutlmError(f"{folder}: quantised checkpoint format {show(manifest.get('format'))} version "
                         f"{show(version)}; this lutlm reads {FORMAT!r} version {VERSION}")
    config = ModelConfig.from_dict(manifest.get("config"), f"{manifest_path}: config")
    template = manifest.get("chat_template")
    if template is not None:
        string(template, f"{manifest_path}: chat_template")
    metas = _tensor_metas(manifest.get("tensors"), manifest_path)
    tokenizer = read_json_object(tok_path)
    encoder = check_tokenizer(tokenizer, config.n_vocab, str(tok_path))
    weights = Safetensors.open(folder / "weights.safetensors", map_data=with_tensors)
    for name, (shape, spec) in metas.items():
        _check_arrays(weights, _arrays(name, shape, spec))
    if not with_tensors:
        return Checkpoint(config, {}, tokenizer, template, str(folder), runtime_tokenizer=encoder), {}
    tensors: dict[str, np.ndarray] = {}
    quantized: dict[str, QTensor] = {}
    types: dict[str, str] = {}
    for name, (_, spec) in metas.items():
        if spec is None:
            tensors[name], types[name] = np.array(weights.array(name)), "F32"
            continue
        quantized[name] = q = _qtensor(weights, name, spec)
        tensors[name], types[name] = q.dequantize(), spec.name
    return Checkpoint(config, tensors, tokenizer, template, str(folder), types, encoder), quantized


def _tensor_metas(metas: Any, where: Path) -> dict[str, tuple[tuple[int, ...], QuantSpec | None]]:
    """Each tensor's shape and quantisation (None: stored as f32), every field checked."""
    if not isinstance(metas, dict):
        raise LutlmError(f"{where}: tensors must be an object, not {json_type(metas)}")
    out = {}
    for name, meta in metas.items():
        what = f"{where}: tensors[{show(name)}]"
        if not isinstance(meta, dict) or meta.get("kind") not in ("float", "quantized"):
            raise LutlmError(f"{what} must be an object of kind 'float' or 'quantized', not {show(meta)}")
        shape = meta.get("shape")
        if not isinstance(shape, list) or not 1 <= len(shape) <= 2:
            raise LutlmError(f"{what}.shape must be a list of one or two sizes, not {show(shape)}")
        dims = tuple(integer(d, f"{what}.shape[{i}]", 1, MAX_DIM) for i, d in enumerate(shape))
        out[name] = (dims, None if meta["kind"] == "float" else _spec(meta, dims, what))
    return out


def _spec(meta: dict[str, Any], shape: tuple[int, ...], what: str) -> QuantSpec:
    """The manifest's quantisation of one tensor: field types here, their values by QuantSpec."""
    fields = (integer(meta.get("bits"), f"{what}.bits", 1, 8), integer(meta.get("group"), f"{what}.group", 1, 1024),
              boolean(meta.get("ternary"), f"{what}.ternary"), boolean(meta.get("symmetric"), f"{what}.symmetric"),
              integer(meta.get("scale_bits", 16), f"{what}.scale_bits", 8, 16))
    try:
        spec = QuantSpec(*fields)
    except LutlmError as exc:
        raise LutlmError(f"{what}: {exc}") from None
    spec.check_shape(shape, what)
    return spec


def _arrays(name: str, shape: tuple[int, ...], spec: QuantSpec | None) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The arrays `write` stores for one tensor: name -> (dtype, shape)."""
    if spec is None:
        return {name: ("F32", shape)}
    rows, cols = shape
    groups = (rows, cols // spec.group)
    arrays = {name + ".planes": ("U32", (spec.bits, rows, cols // 32))}
    if spec.scale_bits == 8:
        return arrays | {name + ".scale": ("U8", groups), name + ".min": ("U8", groups), name + ".steps": ("F16", (rows, 2))}
    return arrays | {name + ".scale": ("F16", groups)} | ({} if spec.ternary else {name + ".min": ("F16", groups)})


def _check_arrays(weights: Safetensors, arrays: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    for array, (dtype, shape) in arrays.items():
        entry = weights.entries.get(array)
        if entry is None:
            raise LutlmError(f"{weights.path} lacks {array}")
        if (entry.dtype, entry.shape) != (dtype, shape):
            raise LutlmError(f"{weights.path}: {array} is {entry.dtype} {list(entry.shape)}; "
                             f"{MANIFEST} implies {dtype} {list(shape)}")


def _qtensor(weights: Safetensors, name: str, spec: QuantSpec) -> QTensor:
    codes = unpack_bitplanes(weights.array(name + ".planes"))
    scale = np.array(weights.array(name + ".scale"))
    minimum = -scale if spec.ternary else np.array(weights.array(name + ".min"))
    steps = np.array(weights.array(name + ".steps")) if spec.scale_bits == 8 else None
    if steps is not None:
        scale, minimum = StepGrid.of(steps).values(scale, minimum)
    return QTensor(spec, codes, scale, minimum, steps)

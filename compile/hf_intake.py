"""Read a Hugging Face model folder (config.json, *.safetensors, tokenizer.json) into a Checkpoint.

Safetensors is parsed here rather than through the `safetensors` package because its numpy
loader cannot represent bf16, the dtype most HF checkpoints ship in, and so that every field of a
header is checked before any data is touched (the quantised checkpoint's reader uses it too); the
format is an 8-byte header length, a JSON header and raw little-endian arrays. Q and K projections are permuted from
HF's rotate-half layout into GGUF's adjacent-pair layout, exactly as llama.cpp's converter does.
"""

from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .checkpoint import Checkpoint, ModelConfig, check_tokenizer
from .errors import LutlmError
from .files import open_regular
from .validate import (boolean, file_size, integer, json_type, parse_json, read_json_object, show,
                       string)

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
           "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8}
_MAX_HEADER = 100 << 20  # the safetensors library's own limit
_MAX_DIMS = 8

_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")

# ModelConfig fields as config.json names them
HF_KEYS = {"architecture": "model_type", "n_layer": "num_hidden_layers", "n_embd": "hidden_size",
           "n_head": "num_attention_heads", "n_head_kv": "num_key_value_heads", "head_dim": "head_dim",
           "n_ff": "intermediate_size", "n_vocab": "vocab_size", "n_ctx": "max_position_embeddings",
           "rope_theta": "rope_theta", "n_rot": "head_dim", "rms_eps": "rms_norm_eps",
           "tied_embeddings": "tie_word_embeddings", "bos_id": "bos_token_id", "eos_id": "eos_token_id",
           "add_bos": "add_bos_token"}
_REQUIRED = ("n_layer", "n_embd", "n_head", "n_ff", "n_vocab")


@dataclass(frozen=True)
class TensorEntry:
    dtype: str
    shape: tuple[int, ...]
    begin: int  # byte range within the data section
    end: int


@dataclass
class Safetensors:
    """One .safetensors file: its header, checked whole before any tensor is read, and its bytes
    mapped (not read) when tensors are wanted."""

    path: Path
    entries: dict[str, TensorEntry]
    start: int  # where the data section begins
    data: np.ndarray | None

    @classmethod
    def open(cls, path: Path, map_data: bool = True) -> "Safetensors":
        with open_regular(path, "safetensors file") as f:
            entries, start = read_header(f, path)
            data = np.memmap(f, dtype=np.uint8, mode="r") if map_data else None
        return cls(path, entries, start, data)

    def array(self, name: str) -> np.ndarray:
        """Tensor `name` as stored (BF16 as its uint16 bits), a view of the mapped file."""
        e = self.entries[name]
        return self.data[self.start + e.begin : self.start + e.end].view(_DTYPES[e.dtype]).reshape(e.shape)

    def float32(self, name: str) -> np.ndarray:
        values = self.array(name)
        if self.entries[name].dtype == "BF16":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        return np.ascontiguousarray(values, dtype=np.float32)


def read_header(f: BinaryIO, path: Path) -> tuple[dict[str, TensorEntry], int]:
    """The tensors a safetensors file declares and where its data starts, every field checked: the
    data ranges tile the data section exactly (no overlap, no gap, nothing outside the file), as
    the format requires, so reading them can allocate no more than the file holds."""
    size = file_size(f)
    raw = f.read(8)
    if len(raw) < 8:
        raise LutlmError(f"{path}: not a safetensors file ({size} bytes, less than its 8-byte header length)")
    (length,) = struct.unpack("<Q", raw)
    if length > min(size - 8, _MAX_HEADER):
        raise LutlmError(f"{path}: unreadable safetensors header: its length field says {length} bytes, "
                         f"{size - 8} follow (truncated, or not a safetensors file)")
    header = parse_json(f.read(length), f"{path}: safetensors header", unique_keys=True)
    if not isinstance(header, dict):
        raise LutlmError(f"{path}: the safetensors header must be a JSON object, not {json_type(header)}")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise LutlmError(f"{path}: __metadata__ must map names to strings, not {show(metadata)}")
    entries = {name: _entry(info, f"{path}: tensor {name}") for name, info in header.items()}
    _check_tiling(entries, size - 8 - length, path)
    return entries, 8 + length


def _entry(info: Any, what: str) -> TensorEntry:
    if not isinstance(info, dict):
        raise LutlmError(f"{what} must be described by an object, not {json_type(info)}")
    dtype = info.get("dtype")
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        raise LutlmError(f"{what}: dtype {show(dtype)} is not one of {', '.join(_DTYPES)}")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or len(shape) > _MAX_DIMS:
        raise LutlmError(f"{what}: shape must be a list of at most {_MAX_DIMS} sizes, not {show(shape)}")
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise LutlmError(f"{what}: data_offsets must be [begin, end], not {show(offsets)}")
    dims = tuple(integer(d, f"{what}: shape[{i}]", 0, 1 << 62) for i, d in enumerate(shape))
    begin = integer(offsets[0], f"{what}: data_offsets[0]", 0, 1 << 62)
    end = integer(offsets[1], f"{what}: data_offsets[1]", begin, 1 << 62)
    need = math.prod(dims) * np.dtype(_DTYPES[dtype]).itemsize
    if end - begin != need:
        raise LutlmError(f"{what}: data_offsets {[begin, end]} hold {end - begin} bytes; shape {list(dims)} of {dtype} needs {need}")
    return TensorEntry(dtype, dims, begin, end)


def _check_tiling(entries: dict[str, TensorEntry], data_size: int, path: Path) -> None:
    position = 0
    for name, e in sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end)):
        if e.begin != position:
            raise LutlmError(f"{path}: tensor {name} starts at byte {e.begin} of the data, expected {position} "
                             f"({'overlapping another' if e.begin < position else 'a gap before it'})")
        position = e.end
    if position > data_size:
        raise LutlmError(f"{path}: truncated: its tensors need {position} bytes of data, the file holds {data_size}")
    if position < data_size:
        raise LutlmError(f"{path}: {data_size - position} bytes after the last tensor (not a safetensors file)")


def permute_for_adjacent_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder rows of a Q or K projection from rotate-half pairs (i, i+d/2) to adjacent pairs (2i, 2i+1)."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _ids(value: Any) -> list[Any]:
    """HF's token id fields: an id, a list of ids (the first one counts), or null."""
    return [] if value is None else value if isinstance(value, list) else [value]


def _given(cfg: dict[str, Any], key: str, default: Any = None) -> Any:
    """`key` of config.json, with null meaning absent as transformers reads it."""
    value = cfg.get(key)
    return default if value is None else value


def read_config(cfg: dict[str, Any], path: Path, has_lm_head: bool) -> ModelConfig:
    """config.json's values, checked against the one schema (ModelConfig.validate)."""
    model_type = cfg.get("model_type")
    if model_type is None:
        raise LutlmError(f"{path} lacks 'model_type'")
    if model_type not in ("llama", "mistral"):
        raise LutlmError(f"{path}: unsupported architecture {show(model_type)} (supported: llama)")
    if cfg.get("rope_scaling") is not None:
        raise LutlmError(f"{path}: RoPE scaling {show(cfg['rope_scaling'])} is not supported")
    for key in ("attention_bias", "mlp_bias", "tie_word_embeddings"):
        boolean(_given(cfg, key, False), f"{path}: {key}")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise LutlmError(f"{path}: attention/MLP biases are not supported")
    for f in _REQUIRED:
        if cfg.get(HF_KEYS[f]) is None:
            raise LutlmError(f"{path} lacks {HF_KEYS[f]!r}")
    bos, eos = _ids(cfg.get("bos_token_id")), _ids(cfg.get("eos_token_id"))
    config = ModelConfig.build({
        "architecture": "llama",
        **{f: cfg[HF_KEYS[f]] for f in _REQUIRED},
        "n_head_kv": cfg.get("num_key_value_heads"),
        "head_dim": cfg.get("head_dim"),
        "n_ctx": _given(cfg, "max_position_embeddings", 2048),
        "rope_theta": _given(cfg, "rope_theta", 10000.0),
        "n_rot": None,
        "rms_eps": _given(cfg, "rms_norm_eps", 1e-6),
        "tied_embeddings": not has_lm_head,
        "bos_id": bos[0] if bos else None,
        "eos_id": eos[0] if eos else None,
        "add_bos": False,
    }, str(path), HF_KEYS)
    for key, ids in (("bos_token_id", bos), ("eos_token_id", eos)):
        _check_ids(ids, f"{path}: {key}", config.n_vocab)
    return config


def _check_ids(ids: list[Any], what: str, n_vocab: int) -> None:
    for i, idx in enumerate(ids):
        integer(idx, f"{what}[{i}]", 0, n_vocab - 1)


def _chat_template(tok_cfg: dict[str, Any], path: Path) -> str | None:
    """tokenizer_config.json's template: a string, or a list of named ones (the default taken)."""
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # several named templates: take the default one
        for i, t in enumerate(template):
            if not isinstance(t, dict):
                raise LutlmError(f"{path}: chat_template[{i}] must be an object, not {json_type(t)}")
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return None if template is None else string(template, f"{path}: chat_template")


def _optional_json(path: Path) -> dict[str, Any]:
    return read_json_object(path) if os.path.lexists(path) else {}


def _hf_name(name: str, folder: Path) -> str | None:
    """The GGUF name of an HF tensor name; None for tensors that are recomputed (rotary tables)."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _LAYER_RE.match(name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        if name.endswith("rotary_emb.inv_freq"):
            return None
        raise LutlmError(f"{folder}: unexpected tensor {name}")
    layer, part, kind = m.groups()
    return f"blk.{layer}.{_LAYER_NAMES[part]}.{kind}"


def _open_shards(folder: Path, with_tensors: bool) -> dict[str, tuple[Safetensors, str]]:
    """Each tensor's GGUF name -> (its file, its HF name), every header read and checked, no data."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LutlmError(f"{folder}: no *.safetensors files")
    where: dict[str, tuple[Safetensors, str]] = {}
    seen: dict[str, Path] = {}
    for path in files:
        shard = Safetensors.open(path, with_tensors)
        for name in shard.entries:
            if name in seen:
                raise LutlmError(f"{path}: tensor {name} is also in {seen[name].name}")
            seen[name] = path
            target = _hf_name(name, folder)
            if target is not None:
                where[target] = (shard, name)
    return where


def load_hf(folder: Path, with_tensors: bool = True) -> Checkpoint:
    """Every file checked (config against the schema, headers against the config's shapes, the
    tokenizer against the vocabulary) before any tensor is read."""
    config_path = folder / "config.json"
    if not os.path.lexists(config_path):
        raise LutlmError(f"{folder}: not a Hugging Face model folder (config.json is missing)")
    cfg = read_json_object(config_path)
    shards = _open_shards(folder, with_tensors)
    config = read_config(cfg, config_path, "output.weight" in shards)
    config.check_shapes({name: shard.entries[hf].shape for name, (shard, hf) in shards.items()}, str(folder))
    tok_path, tok_cfg_path, gen_path = (folder / n for n in ("tokenizer.json", "tokenizer_config.json",
                                                             "generation_config.json"))
    if not os.path.lexists(tok_path):
        raise LutlmError(f"{folder}: tokenizer.json is missing")
    tokenizer = read_json_object(tok_path)
    encoder = check_tokenizer(tokenizer, config.n_vocab, str(tok_path))
    tok_cfg = _optional_json(tok_cfg_path)
    gen_eos = _ids(_optional_json(gen_path).get("eos_token_id"))
    _check_ids(gen_eos, f"{gen_path}: eos_token_id", config.n_vocab)
    config = replace(config, eos_id=gen_eos[0] if gen_eos else config.eos_id,
                     add_bos=boolean(tok_cfg.get("add_bos_token", False), f"{tok_cfg_path}: add_bos_token"))
    template = _chat_template(tok_cfg, tok_cfg_path)

    tensors: dict[str, np.ndarray] = {}
    types = {name: shard.entries[hf].dtype for name, (shard, hf) in shards.items()}
    for name, (shard, hf) in shards.items() if with_tensors else ():
        value = shard.float32(hf)
        if ".attn_q." in name:
            value = permute_for_adjacent_rope(value, config.n_head)
        elif ".attn_k." in name:
            value = permute_for_adjacent_rope(value, config.n_head_kv)
        tensors[name] = value
    return Checkpoint(config, tensors, tokenizer, template, str(folder), types, encoder)

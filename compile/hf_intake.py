"""Read a Hugging Face model folder (config.json, *.safetensors, tokenizer.json) into a Checkpoint.

Safetensors is parsed here rather than through the `safetensors` package because its numpy
loader cannot represent bf16, the dtype most HF checkpoints ship in; the format is an 8-byte
header length, a JSON header and raw little-endian arrays. Q and K projections are permuted from
HF's rotate-half layout into GGUF's adjacent-pair layout, exactly as llama.cpp's converter does.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import Checkpoint, ModelConfig
from .errors import LutlmError

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8}
_MAX_HEADER = 100 << 20

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


def read_safetensors(path: Path, with_tensors: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of one .safetensors file as fp32 arrays (unless not wanted), and each one's stored dtype."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise LutlmError(f"{path}: not a safetensors file (too short)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > _MAX_HEADER:
            raise LutlmError(f"{path}: not a safetensors file (header of {header_len} bytes)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LutlmError(f"{path}: not a safetensors file ({exc})") from None
    start = 8 + header_len
    size = path.stat().st_size
    data = np.memmap(path, dtype=np.uint8, mode="r")
    tensors: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise LutlmError(f"{path}: tensor {name} has unsupported dtype {info.get('dtype')!r}")
        begin, end = (int(x) for x in info["data_offsets"])
        shape = tuple(int(d) for d in info["shape"])
        if start + end > size or end - begin != int(np.prod(shape)) * np.dtype(dtype).itemsize:
            raise LutlmError(f"{path}: tensor {name} lies outside the file or has the wrong size (truncated?)")
        dtypes[name] = info["dtype"]
        if not with_tensors:
            continue
        values = data[start + begin : start + end].view(dtype).reshape(shape)
        if info["dtype"] == "BF16":
            values = (values.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = np.ascontiguousarray(values, dtype=np.float32)
    return tensors, dtypes


def permute_for_adjacent_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder rows of a Q or K projection from rotate-half pairs (i, i+d/2) to adjacent pairs (2i, 2i+1)."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LutlmError(f"{path.parent}: not a Hugging Face model folder ({path.name} is missing)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LutlmError(f"{path}: invalid JSON ({exc})") from None


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else int(value)


def read_config(cfg: dict[str, Any], folder: Path, has_lm_head: bool) -> ModelConfig:
    model_type = cfg.get("model_type")
    if model_type not in ("llama", "mistral"):
        raise LutlmError(f"{folder}: unsupported architecture {model_type!r} (supported: llama)")
    if cfg.get("rope_scaling"):
        raise LutlmError(f"{folder}: RoPE scaling {cfg['rope_scaling']!r} is not supported")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise LutlmError(f"{folder}: attention/MLP biases are not supported")
    try:
        n_embd, n_head = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or n_embd // n_head)
        return ModelConfig(
            architecture="llama",
            n_layer=int(cfg["num_hidden_layers"]),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=int(cfg.get("num_key_value_heads") or n_head),
            head_dim=head_dim,
            n_ff=int(cfg["intermediate_size"]),
            n_vocab=int(cfg["vocab_size"]),
            n_ctx=int(cfg.get("max_position_embeddings", 2048)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            n_rot=head_dim,
            rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tied_embeddings=not has_lm_head,
            bos_id=_first_id(cfg.get("bos_token_id")),
            eos_id=_first_id(cfg.get("eos_token_id")),
            add_bos=False,
        )
    except KeyError as exc:
        raise LutlmError(f"{folder}/config.json lacks {exc.args[0]!r}") from None


def load_hf(folder: Path, with_tensors: bool = True) -> Checkpoint:
    cfg = _read_json(folder / "config.json")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LutlmError(f"{folder}: no *.safetensors files")
    raw: dict[str, np.ndarray] = {}
    raw_types: dict[str, str] = {}
    for f in files:
        values, dtypes = read_safetensors(f, with_tensors)
        raw.update(values)
        raw_types.update(dtypes)
    config = read_config(cfg, folder, "lm_head.weight" in raw_types)
    tokenizer = _read_json(folder / "tokenizer.json")
    tok_cfg_path = folder / "tokenizer_config.json"
    tok_cfg = _read_json(tok_cfg_path) if tok_cfg_path.exists() else {}
    gen_path = folder / "generation_config.json"
    gen_eos = _first_id(_read_json(gen_path).get("eos_token_id")) if gen_path.exists() else None
    config = replace(config, eos_id=config.eos_id if gen_eos is None else gen_eos,
                     add_bos=bool(tok_cfg.get("add_bos_token", False)))

    tensors: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    for name, value in raw.items():
        if name in _GLOBAL_NAMES:
            tensors[_GLOBAL_NAMES[name]] = value
            types[_GLOBAL_NAMES[name]] = raw_types[name]
            continue
        m = _LAYER_RE.match(name)
        if m is None or m.group(2) not in _LAYER_NAMES:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            raise LutlmError(f"{folder}: unexpected tensor {name}")
        layer, part, kind = m.groups()
        target = _LAYER_NAMES[part]
        if target == "attn_q":
            value = permute_for_adjacent_rope(value, config.n_head)
        elif target == "attn_k":
            value = permute_for_adjacent_rope(value, config.n_head_kv)
        tensors[f"blk.{layer}.{target}.{kind}"] = value
        types[f"blk.{layer}.{target}.{kind}"] = raw_types[name]
    template = tok_cfg.get("chat_template")
    if isinstance(template, list):  # several named templates: take the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return Checkpoint(config, tensors, tokenizer, template, str(folder), types)

"""Read a Hugging Face model folder (config.json, *.safetensors, tokenizer.json) into a Checkpoint.

Q and K projections are permuted from HF's rotate-half layout into GGUF's adjacent-pair layout,
exactly as llama.cpp's converter does.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint, ModelConfig, check_tokenizer
from ..errors import LutlmError
from ..models import llama
from ..validate import boolean, integer, json_type, read_json_object, show, string
from .safetensors import Safetensors


# ModelConfig fields as config.json names them
HF_KEYS = {"architecture": "model_type", "n_layer": "num_hidden_layers", "n_embd": "hidden_size",
           "n_head": "num_attention_heads", "n_head_kv": "num_key_value_heads", "head_dim": "head_dim",
           "n_ff": "intermediate_size", "n_vocab": "vocab_size", "n_ctx": "max_position_embeddings",
           "rope_theta": "rope_theta", "n_rot": "head_dim", "rms_eps": "rms_norm_eps",
           "tied_embeddings": "tie_word_embeddings", "bos_id": "bos_token_id", "eos_id": "eos_token_id",
           "add_bos": "add_bos_token"}
_REQUIRED = ("n_layer", "n_embd", "n_head", "n_ff", "n_vocab")


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
    if model_type not in llama.HF_MODEL_TYPES:
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
        "architecture": llama.ARCHITECTURE,
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
    target = llama.from_hf(name)
    if target is None and not name.endswith(llama.HF_RECOMPUTED):
        raise LutlmError(f"{folder}: unexpected tensor {name}")
    return target


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
    config = read_config(cfg, config_path, llama.OUTPUT in shards)
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
    rotate_half = llama.hf_rotate_half(config)
    for name, (shard, hf) in shards.items() if with_tensors else ():
        value = shard.float32(hf)
        tensors[name] = permute_for_adjacent_rope(value, rotate_half[name]) if name in rotate_half else value
    return Checkpoint(config, tensors, tokenizer, template, str(folder), types, encoder)

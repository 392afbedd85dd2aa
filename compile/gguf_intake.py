"""Read a GGUF file (llama.cpp's format) into a Checkpoint, dequantising every tensor to fp32.

The `gguf` package parses the file and dequantises every block type it knows; this module checks
what a damaged or foreign file would otherwise turn into a traceback, and converts the GGUF
tokenizer fields into the Hugging Face `tokenizer.json` structure the runtime reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import Checkpoint, ModelConfig
from .errors import LutlmError

GGUF_MAGIC = b"GGUF"

# llama.cpp's `tokenizer.ggml.pre` names, as the equivalent HF pre-tokeniser configuration.
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_BYTE_LEVEL_NO_REGEX = {**_BYTE_LEVEL, "use_regex": False}
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _split(pattern: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
    "llama-bpe": {"type": "Sequence", "pretokenizers": [_split(_LLAMA3_PATTERN), _BYTE_LEVEL_NO_REGEX]},
    "qwen2": {"type": "Sequence", "pretokenizers": [_split(_QWEN2_PATTERN), _BYTE_LEVEL_NO_REGEX]},
}
_IGNORE_MERGES = {"llama-bpe"}

# gguf.constants.TokenType values
_CONTROL, _USER_DEFINED = 3, 4


class _Fields:
    """Typed access to GGUF key/value metadata with clear errors."""

    def __init__(self, reader: Any, path: Path):
        self.reader = reader
        self.path = path

    def get(self, key: str, default: Any = None) -> Any:
        field = self.reader.fields.get(key)
        if field is None:
            return default
        try:
            return field.contents()
        except Exception as exc:  # the gguf package raises assorted errors on malformed fields
            raise LutlmError(f"{self.path}: metadata {key} is unreadable ({exc})") from None

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise LutlmError(f"{self.path}: metadata {key} is missing")
        return value


def _open(path: Path) -> Any:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise LutlmError(f"{path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # truncation and corruption surface as ValueError, IndexError, struct errors
        raise LutlmError(f"{path}: corrupt or truncated GGUF ({type(exc).__name__}: {exc})") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + int(t.n_bytes) > size:
            raise LutlmError(f"{path}: truncated GGUF (tensor {t.name} ends at byte {t.data_offset + int(t.n_bytes)}, file has {size})")
    return reader


def read_config(fields: _Fields) -> ModelConfig:
    arch = str(fields.require("general.architecture"))
    if arch != "llama":
        raise LutlmError(f"{fields.path}: unsupported architecture {arch!r} (supported: llama)")
    a = f"{arch}."
    n_embd = int(fields.require(a + "embedding_length"))
    n_head = int(fields.require(a + "attention.head_count"))
    head_dim = int(fields.get(a + "attention.key_length", n_embd // max(n_head, 1)))
    scaling = fields.get(a + "rope.scaling.type")
    if scaling not in (None, "none") and float(fields.get(a + "rope.scaling.factor", 1.0)) != 1.0:
        raise LutlmError(f"{fields.path}: RoPE scaling {scaling!r} is not supported")
    tokens = fields.require("tokenizer.ggml.tokens")
    bos, eos = fields.get("tokenizer.ggml.bos_token_id"), fields.get("tokenizer.ggml.eos_token_id")
    return ModelConfig(
        architecture=arch,
        n_layer=int(fields.require(a + "block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(fields.get(a + "attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_ff=int(fields.require(a + "feed_forward_length")),
        n_vocab=int(fields.get(a + "vocab_size", len(tokens))),
        n_ctx=int(fields.require(a + "context_length")),
        rope_theta=float(fields.get(a + "rope.freq_base", 10000.0)),
        n_rot=int(fields.get(a + "rope.dimension_count", head_dim)),
        rms_eps=float(fields.require(a + "attention.layer_norm_rms_epsilon")),
        tied_embeddings=not any(t.name == "output.weight" for t in fields.reader.tensors),
        bos_id=None if bos is None else int(bos),
        eos_id=None if eos is None else int(eos),
        add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", False)),
    )


def read_tokenizer(fields: _Fields) -> dict[str, Any]:
    """The GGUF vocabulary as a Hugging Face tokenizer.json structure."""
    model = fields.require("tokenizer.ggml.model")
    if model != "gpt2":
        raise LutlmError(f"{fields.path}: tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2')")
    pre = str(fields.get("tokenizer.ggml.pre", "gpt2"))
    if pre not in PRE_TOKENIZERS:
        raise LutlmError(f"{fields.path}: pre-tokeniser {pre!r} is not supported (supported: {', '.join(PRE_TOKENIZERS)})")
    tokens = [str(t) for t in fields.require("tokenizer.ggml.tokens")]
    types = list(fields.get("tokenizer.ggml.token_type", [1] * len(tokens)))
    vocab: dict[str, int] = {}
    for i, tok in enumerate(tokens):
        vocab.setdefault(tok, i)
    added = [
        {"id": i, "content": tokens[i], "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": types[i] == _CONTROL}
        for i in range(len(tokens)) if types[i] in (_CONTROL, _USER_DEFINED)
    ]
    return {
        "version": "1.0",
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TOKENIZERS[pre],
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": pre in _IGNORE_MERGES,
            "vocab": vocab,
            "merges": [str(m) for m in fields.get("tokenizer.ggml.merges", [])],
        },
    }


def load_gguf(path: Path, with_tensors: bool = True) -> Checkpoint:
    from gguf import dequantize

    reader = _open(path)
    fields = _Fields(reader, path)
    config = read_config(fields)
    tokenizer = read_tokenizer(fields)
    tensors: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    for t in reader.tensors if with_tensors else ():
        try:
            values = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise LutlmError(f"{path}: tensor {t.name} has block type {t.tensor_type.name}, which cannot be dequantised") from None
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors[t.name] = np.ascontiguousarray(values, dtype=np.float32).reshape(shape)
        types[t.name] = t.tensor_type.name
    template = fields.get("tokenizer.chat_template")
    return Checkpoint(config, tensors, tokenizer, template, str(path), types)

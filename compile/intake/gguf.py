"""Read a GGUF file (llama.cpp's format) into a Checkpoint, dequantising every tensor to fp32.

The `gguf` package parses the file and dequantises every block type it knows. This module first
walks the file's structure with every count, length and offset checked against the file (the
package trusts them), then checks the metadata against the one config schema and the tensor
shapes against the config before anything is dequantised, and converts the GGUF tokenizer fields
into the Hugging Face `tokenizer.json` structure the runtime reads.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint, ModelConfig, check_tokenizer
from ..errors import LutlmError
from ..files import open_regular
from ..models import llama
from ..validate import file_size, show, string

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


_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
_STRING, _ARRAY, _U32 = 8, 9, 4
_U64 = struct.Struct("<Q")
_VERSIONS = (2, 3)  # v1 counted in 32 bits; the gguf package reads 2 and 3
_MAX_TENSORS = 1 << 16  # a model within the runtime's bounds has at most 9 * 1024 + 3
_MAX_KVS = 1 << 16  # real files have a few dozen
_MAX_ITEMS = 3 << 21  # array elements in all: tokens, token types and merges of the largest vocabulary
_MAX_KEY = 1 << 16  # the GGUF specification's limit on key length
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NAME = 256  # GGML_MAX_NAME is 64
_MAX_METADATA = 256 << 20  # where the tensor descriptions must end (a 256k vocabulary's take ~20 MiB)
_DEFAULT_ALIGNMENT = 32


class _Scan:
    """A walk of a GGUF file's header, metadata and tensor descriptions with every count and
    length checked against the bytes left, before the gguf package parses it: GGUFReader trusts
    the counts, and an array of 2^40 elements at the end of a file has it grow memory without end.
    Tensor data must follow the descriptions in order, each at the next aligned offset, and end
    within the file (as llama.cpp requires).
    """

    def __init__(self, data: mmap.mmap, path: Path, size: int):
        self.data, self.path, self.size, self.pos, self.items = data, path, size, 0, 0  # data: the first bytes
        self.alignment = _DEFAULT_ALIGNMENT

    def fail(self, message: str) -> LutlmError:
        return LutlmError(f"{self.path}: corrupt or truncated GGUF ({message}, at byte {self.pos})")

    def skip(self, n: int, what: str) -> int:
        """Step over `n` bytes; where they start."""
        if n > len(self.data) - self.pos:
            left = "" if len(self.data) == self.size else f" of the first {_MAX_METADATA >> 20} MiB, where it must end"
            raise self.fail(f"{what} needs {n} bytes, {len(self.data) - self.pos} are left{left}")
        self.pos += n
        return self.pos - n

    def number(self, fmt: str, what: str) -> Any:
        return struct.unpack_from(fmt, self.data, self.skip(struct.calcsize(fmt), what))[0]

    def count(self, what: str, limit: int, each: int) -> int:
        """A u64 count of things of at least `each` bytes: at most `limit`, and fitting in the file."""
        n = self.number("<Q", what)
        if n > limit or n * each > len(self.data) - self.pos:
            raise self.fail(f"{what} is {n}, more than " + (f"{limit}" if n > limit else "the file holds"))
        return n

    def text(self, what: str, limit: int) -> str:
        start = self.skip(self.count(f"the length of {what}", limit, 1), what)
        try:
            return self.data[start : self.pos].decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def strings(self, n: int, what: str) -> None:
        """Step over `n` strings (a vocabulary's worth, so in one tight loop)."""
        data, pos, size = self.data, self.pos, len(self.data)
        for _ in range(n):
            length = _U64.unpack_from(data, pos)[0] if pos + 8 <= size else size  # past the end: fails below
            pos += 8 + length
            if pos > size:
                raise self.fail(f"an element of {what} runs past the end of the file")
        self.pos = pos

    def value(self, vtype: int, what: str) -> None:
        if vtype == _STRING:
            self.skip(self.count(f"the length of {what}", len(self.data), 1), what)
        elif vtype == _ARRAY:
            itype = self.number("<I", f"the element type of {what}")
            size = 8 if itype == _STRING else _SCALAR_SIZES.get(itype)
            if size is None:
                raise self.fail(f"{what} is an array of type {itype}, not of a scalar or string type")
            n = self.count(f"the length of {what}", _MAX_ITEMS - self.items, size)
            self.items += n
            if itype == _STRING:
                self.strings(n, what)
            else:
                self.skip(n * size, what)
        elif vtype in _SCALAR_SIZES:
            self.skip(_SCALAR_SIZES[vtype], what)
        else:
            raise self.fail(f"{what} has type {vtype}, not a GGUF value type")

    def metadata(self) -> None:
        key = self.text("a metadata key", _MAX_KEY)
        vtype = self.number("<I", f"the type of {key}")
        at = self.pos
        self.value(vtype, f"metadata {key}")
        if key == "general.alignment":
            self.alignment = struct.unpack_from("<I", self.data, at)[0] if vtype == _U32 else 0
            if self.alignment == 0 or self.alignment & (self.alignment - 1):
                raise self.fail("general.alignment must be a u32 power of two")

    def tensor(self, expected: int) -> int:
        """One tensor description, its data expected at offset `expected`; where its data ends."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        name = self.text("a tensor name", _MAX_NAME)
        n_dims = self.number("<I", f"tensor {name}'s number of dimensions")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise self.fail(f"tensor {name} has {n_dims} dimensions (1 to {_MAX_DIMS} allowed)")
        dims = [self.number("<Q", f"tensor {name}'s dimensions") for _ in range(n_dims)]
        raw_type = self.number("<I", f"tensor {name}'s type")
        offset = self.number("<Q", f"tensor {name}'s offset")
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(raw_type)]
        except (ValueError, KeyError):
            raise self.fail(f"tensor {name} has type {raw_type}, not a GGML type") from None
        if min(dims) == 0 or dims[0] % block:
            raise self.fail(f"tensor {name} has dimensions {dims} (each at least 1, the first a multiple of {block})")
        if offset != expected:
            raise self.fail(f"tensor {name}'s data is at offset {offset}, expected {expected} (right after the one before)")
        return offset + math.prod(dims) // block * block_bytes

    def walk(self) -> None:
        if self.number("<4s", "the magic") != GGUF_MAGIC:
            raise self.fail("no GGUF magic")
        version = self.number("<I", "the version")
        if version not in _VERSIONS:
            raise self.fail(f"version {version}; this lutlm reads versions {' and '.join(map(str, _VERSIONS))}")
        n_tensors = self.count("tensor_count", _MAX_TENSORS, 32)  # a name length, one dimension, type, offset
        n_kvs = self.count("kv_count", _MAX_KVS, 13)  # a key length, a type, one byte of value
        for _ in range(n_kvs):
            self.metadata()
        end = 0
        for _ in range(n_tensors):
            end = self.tensor(end + -end % self.alignment)
        data_start = self.pos + -self.pos % self.alignment
        if data_start + end > self.size:
            raise LutlmError(f"{self.path}: truncated GGUF (its tensors end at byte {data_start + end}, "
                             f"the file has {self.size})")


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

    def strings(self, key: str, default: list[str] | None = None) -> list[str]:
        value = self.get(key, default) if default is not None else self.require(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise LutlmError(f"{self.path}: metadata {key} must be an array of strings")
        return value


def _open(path: Path) -> Any:
    """The gguf package's reader of `path`, once its structure has been walked with every count
    and offset checked (_Scan); the reader maps the file opened here, so it is the file checked."""
    from gguf import GGUFReader

    f = open_regular(path, "GGUF file")
    with f:
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise LutlmError(f"{path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
        size = file_size(f)
        with mmap.mmap(f.fileno(), min(size, _MAX_METADATA), access=mmap.ACCESS_READ) as data:
            _Scan(data, path, size).walk()
        try:
            return GGUFReader(f, "r")  # np.memmap takes an open file as well as a path
        except Exception as exc:  # what the walk does not check: duplicate keys or names, field encodings
            raise LutlmError(f"{path}: corrupt GGUF ({type(exc).__name__}: {exc})") from None


# ModelConfig fields as GGUF metadata names them, after "metadata " and "{architecture}."
_ARCH_KEYS = {"n_layer": "block_count", "n_embd": "embedding_length", "n_head": "attention.head_count",
              "n_head_kv": "attention.head_count_kv", "head_dim": "attention.key_length",
              "n_ff": "feed_forward_length", "n_vocab": "vocab_size", "n_ctx": "context_length",
              "rope_theta": "rope.freq_base", "n_rot": "rope.dimension_count",
              "rms_eps": "attention.layer_norm_rms_epsilon"}
_KEYS = {"architecture": "general.architecture", "bos_id": "tokenizer.ggml.bos_token_id",
         "eos_id": "tokenizer.ggml.eos_token_id", "add_bos": "tokenizer.ggml.add_bos_token"}


def read_config(fields: _Fields, n_tokens: int) -> ModelConfig:
    """The metadata's values, checked against the one schema (ModelConfig.validate)."""
    arch = fields.require("general.architecture")
    if arch != "llama":
        raise LutlmError(f"{fields.path}: unsupported architecture {show(arch)} (supported: llama)")
    keys = {f: f"metadata {k}" for f, k in _KEYS.items()} | {f: f"metadata llama.{k}" for f, k in _ARCH_KEYS.items()}
    scaling = fields.get("llama.rope.scaling.type")
    if scaling not in (None, "none") and fields.get("llama.rope.scaling.factor", 1.0) != 1.0:
        raise LutlmError(f"{fields.path}: RoPE scaling {show(scaling)} is not supported")
    optional = {"n_head_kv": None, "head_dim": None, "n_rot": None, "rope_theta": 10000.0, "n_vocab": n_tokens}
    values = {f: fields.get(f"llama.{k}", optional[f]) if f in optional else fields.require(f"llama.{k}")
              for f, k in _ARCH_KEYS.items()}
    return ModelConfig.build({
        "architecture": arch, **values,
        "tied_embeddings": not any(t.name == llama.OUTPUT for t in fields.reader.tensors),
        "bos_id": fields.get(_KEYS["bos_id"]),
        "eos_id": fields.get(_KEYS["eos_id"]),
        "add_bos": fields.get(_KEYS["add_bos"], False),
    }, str(fields.path), keys)


def read_tokenizer(fields: _Fields, tokens: list[str]) -> dict[str, Any]:
    """The GGUF vocabulary as a Hugging Face tokenizer.json structure."""
    model = fields.require("tokenizer.ggml.model")
    if model != "gpt2":
        raise LutlmError(f"{fields.path}: tokenizer model {show(model)} is not supported (only byte-level BPE, 'gpt2')")
    pre = fields.get("tokenizer.ggml.pre", "gpt2")
    if not isinstance(pre, str) or pre not in PRE_TOKENIZERS:
        raise LutlmError(f"{fields.path}: pre-tokeniser {show(pre)} is not supported (supported: {', '.join(PRE_TOKENIZERS)})")
    types = fields.get("tokenizer.ggml.token_type", [1] * len(tokens))
    if not isinstance(types, list) or len(types) != len(tokens) or not all(type(t) is int for t in types):
        raise LutlmError(f"{fields.path}: metadata tokenizer.ggml.token_type must be {len(tokens)} integers, "
                         f"one per token")
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
            "merges": fields.strings("tokenizer.ggml.merges", []),
        },
    }


def load_gguf(path: Path, with_tensors: bool = True) -> Checkpoint:
    """Metadata checked against the schema, tensor shapes against the config and the tokenizer
    against the vocabulary, all before any tensor is dequantised."""
    from gguf import dequantize

    reader = _open(path)
    fields = _Fields(reader, path)
    tokens = fields.strings("tokenizer.ggml.tokens")
    if not tokens:
        raise LutlmError(f"{path}: metadata tokenizer.ggml.tokens is empty")
    config = read_config(fields, len(tokens))
    if len(tokens) > config.n_vocab:
        raise LutlmError(f"{path}: {len(tokens)} tokens, more than metadata llama.vocab_size ({config.n_vocab})")
    config.check_shapes({t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in reader.tensors}, str(path))
    tokenizer = read_tokenizer(fields, tokens)
    encoder = check_tokenizer(tokenizer, config.n_vocab, f"{path} (tokenizer.ggml.*)")
    template = fields.get("tokenizer.chat_template")
    if template is not None:
        string(template, f"{path}: metadata tokenizer.chat_template")
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
    return Checkpoint(config, tensors, tokenizer, template, str(path), types, encoder)

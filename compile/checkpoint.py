"""The one in-memory form every model source is read into.

Tensor names are llama.cpp's GGUF names, as the architecture's module in `lutlm.models` defines
them; values are fp32 numpy arrays shaped (out_features, in_features). Q and K rows are in GGUF's
order, where RoPE rotates adjacent pairs (2i, 2i+1); Hugging Face weights are permuted into that
order on intake.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from runtime_py.package import CONFIG_BOUNDS

from .errors import LutlmError
from .models import architecture
from .validate import F32_MAX, boolean, integer, json_type, real, show, string

if TYPE_CHECKING:
    from runtime_py import Tokenizer

RMS_EPS_MAX = 1.0  # real models use 1e-6 to 1e-5; an epsilon this large drowns the signal


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    n_ctx: int
    rope_theta: float
    n_rot: int  # leading dimensions of each head that RoPE rotates
    rms_eps: float
    tied_embeddings: bool
    bos_id: int | None
    eos_id: int | None
    add_bos: bool

    def norm_names(self) -> list[str]:
        """The RMSNorm gains, kept as f32 in every format."""
        return architecture(self.architecture).norm_names(self)

    def validate(self, where: str = "model config", keys: Mapping[str, str] | None = None) -> None:
        """Every field of its type, in its range and consistent with the others, checked before
        anything is sized by them. The one schema of every reader: `where` names the file and
        `keys` each field as that file spells it. The bounds are the runtime's, so that what
        intake accepts a package can hold."""
        keys = keys or {}

        def name(f: str) -> str:
            return f"{where}: {keys.get(f, f)}"

        string(self.architecture, name("architecture"))
        architecture(self.architecture, where)
        for f, hi in CONFIG_BOUNDS.items():
            integer(getattr(self, f), name(f), 1, hi)
        real(self.rope_theta, name("rope_theta"), 0, F32_MAX)
        real(self.rms_eps, name("rms_eps"), 0, RMS_EPS_MAX)
        boolean(self.tied_embeddings, name("tied_embeddings"))
        boolean(self.add_bos, name("add_bos"))
        for f in ("bos_id", "eos_id"):
            if getattr(self, f) is not None:
                integer(getattr(self, f), f"{name(f)} (a token id)", 0, self.n_vocab - 1)
        if self.n_head % self.n_head_kv:
            raise LutlmError(f"{name('n_head')} ({self.n_head}) is not a multiple of "
                             f"{keys.get('n_head_kv', 'n_head_kv')} ({self.n_head_kv})")
        if self.n_rot % 2 or self.n_rot > self.head_dim:
            raise LutlmError(f"{name('n_rot')} ({self.n_rot}) must be even and at most "
                             f"{keys.get('head_dim', 'head_dim')} ({self.head_dim})")

    @classmethod
    def build(cls, values: dict[str, Any], where: str, keys: Mapping[str, str]) -> "ModelConfig":
        """A validated config from a file's raw values, where head_dim, n_head_kv and n_rot may be
        None: then they are n_embd / n_head (which must divide), n_head and head_dim, as in llama."""
        v = dict(values)
        if v["head_dim"] is None:
            n_embd = integer(v["n_embd"], f"{where}: {keys['n_embd']}", 1, CONFIG_BOUNDS["n_embd"])
            n_head = integer(v["n_head"], f"{where}: {keys['n_head']}", 1, CONFIG_BOUNDS["n_head"])
            if n_embd % n_head:
                raise LutlmError(f"{where}: {keys['n_embd']} ({n_embd}) is not a multiple of {keys['n_head']} ({n_head})")
            v["head_dim"] = n_embd // n_head
        v["n_head_kv"] = v["n_head"] if v["n_head_kv"] is None else v["n_head_kv"]
        v["n_rot"] = v["head_dim"] if v["n_rot"] is None else v["n_rot"]
        config = cls(**v)
        config.validate(where, keys)
        return config

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "ModelConfig":
        """A config as lutlm writes it (asdict), validated: exactly the fields, each checked."""
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict):
            raise LutlmError(f"{where} must be an object, not {json_type(data)}")
        missing, extra = [n for n in names if n not in data], sorted(set(data) - set(names))
        if missing or extra:
            raise LutlmError(f"{where} " + (f"lacks {missing[0]}" if missing else f"has an unknown field {show(extra[0])}"))
        config = cls(**data)
        config.validate(where)
        return config

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
        """The tensors a file holds (or declares, before any is read) are exactly those this config implies."""
        expected = architecture(self.architecture).tensor_shapes(self)
        extra = sorted(set(shapes) - set(expected))
        if extra:
            raise LutlmError(f"{source}: unexpected tensor {extra[0]} (a feature this architecture support lacks)")
        for name, shape in expected.items():
            if name not in shapes:
                raise LutlmError(f"{source}: tensor {name} is missing")
            if tuple(shapes[name]) != shape:
                raise LutlmError(f"{source}: tensor {name} has shape {tuple(shapes[name])}, expected {shape}")


def check_tokenizer(tokenizer: Any, n_vocab: int, where: str) -> "Tokenizer":
    """The runtime's Tokenizer of a tokenizer.json structure, every id inside the model's vocabulary.

    The ids are checked before the runtime sees them (it sizes a table by the largest); then the
    runtime builds it, and whatever its own checks find is reported against the file. Readers keep
    what it returns in the Checkpoint, so that it is built once."""
    from runtime_py import Tokenizer

    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("model"), dict):
        raise LutlmError(f"{where}: the tokenizer has no model object")
    model = tokenizer["model"]
    vocab, merges, added = model.get("vocab"), model.get("merges"), tokenizer.get("added_tokens")
    merges, added = [] if merges is None else merges, [] if added is None else added
    if not isinstance(vocab, dict) or not vocab:
        raise LutlmError(f"{where}: model.vocab must be a non-empty object of token ids")
    for token, idx in vocab.items():
        integer(idx, f"{where}: model.vocab[{show(token)}]", 0, n_vocab - 1)
    if not isinstance(merges, list) or not all(_is_merge(m) for m in merges):
        bad = merges if not isinstance(merges, list) else next(m for m in merges if not _is_merge(m))
        raise LutlmError(f"{where}: model.merges must hold 'a b' strings or [a, b] pairs, not {show(bad)}")
    if not isinstance(added, list):
        raise LutlmError(f"{where}: added_tokens must be a list, not {json_type(added)}")
    for i, tok in enumerate(added):
        if not isinstance(tok, dict):
            raise LutlmError(f"{where}: added_tokens[{i}] must be an object, not {json_type(tok)}")
        integer(tok.get("id"), f"{where}: added_tokens[{i}].id", 0, n_vocab - 1)
        string(tok.get("content"), f"{where}: added_tokens[{i}].content")
    try:
        return Tokenizer(tokenizer)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise LutlmError(f"{where}: {exc}") from None


def _is_merge(merge: Any) -> bool:
    if isinstance(merge, list):
        return len(merge) == 2 and all(isinstance(part, str) for part in merge)
    return isinstance(merge, str) and " " in merge


@dataclass
class Checkpoint:
    config: ModelConfig
    tensors: dict[str, np.ndarray]
    tokenizer: dict[str, Any]  # Hugging Face tokenizer.json structure
    chat_template: str | None = None
    source: str = ""
    tensor_types: dict[str, str] = field(default_factory=dict)  # storage type in the source file
    # the runtime's Tokenizer of `tokenizer`, as intake built it to check it (None: not built yet)
    runtime_tokenizer: Any = field(default=None, repr=False, compare=False)

    def validate(self) -> None:
        """Every tensor the architecture needs is present with the shape the config implies, and
        finite: a NaN weight or block scale would otherwise turn every output into NaN silently."""
        self.config.validate(self.source)
        self.config.check_shapes({name: t.shape for name, t in self.tensors.items()}, self.source)
        for name, tensor in self.tensors.items():
            if not np.isfinite(tensor).all():
                raise LutlmError(f"{self.source}: tensor {name} holds NaN or infinite values")

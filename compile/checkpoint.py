"""The one in-memory form every model source is read into.

Tensor names are llama.cpp's GGUF names (`token_embd.weight`, `blk.3.attn_q.weight`, ...), values
fp32 numpy arrays shaped (out_features, in_features). Q and K rows are in GGUF's order, where RoPE
rotates adjacent pairs (2i, 2i+1); Hugging Face weights are permuted into that order on intake.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import LutlmError

SUPPORTED_ARCHITECTURES = ("llama",)


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
        return ["output_norm.weight"] + [f"blk.{i}.{p}.weight" for i in range(self.n_layer)
                                         for p in ("attn_norm", "ffn_norm")]

    def validate(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise LutlmError(f"unsupported architecture {self.architecture!r} (supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
        for name in ("n_layer", "n_embd", "n_head", "n_head_kv", "head_dim", "n_ff", "n_vocab", "n_ctx"):
            if getattr(self, name) <= 0:
                raise LutlmError(f"model config has {name} = {getattr(self, name)}")
        if self.n_head % self.n_head_kv:
            raise LutlmError(f"{self.n_head} attention heads do not divide into {self.n_head_kv} KV heads")
        if self.n_rot % 2 or not 0 < self.n_rot <= self.head_dim:
            raise LutlmError(f"RoPE dimension {self.n_rot} does not fit head dimension {self.head_dim}")


@dataclass
class Checkpoint:
    config: ModelConfig
    tensors: dict[str, np.ndarray]
    tokenizer: dict[str, Any]  # Hugging Face tokenizer.json structure
    chat_template: str | None = None
    source: str = ""
    tensor_types: dict[str, str] = field(default_factory=dict)  # storage type in the source file

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        c = self.config
        shapes: dict[str, tuple[int, ...]] = {
            "token_embd.weight": (c.n_vocab, c.n_embd),
            "output_norm.weight": (c.n_embd,),
        }
        if not c.tied_embeddings:
            shapes["output.weight"] = (c.n_vocab, c.n_embd)
        for i in range(c.n_layer):
            shapes.update({
                f"blk.{i}.attn_norm.weight": (c.n_embd,),
                f"blk.{i}.attn_q.weight": (c.n_head * c.head_dim, c.n_embd),
                f"blk.{i}.attn_k.weight": (c.n_head_kv * c.head_dim, c.n_embd),
                f"blk.{i}.attn_v.weight": (c.n_head_kv * c.head_dim, c.n_embd),
                f"blk.{i}.attn_output.weight": (c.n_embd, c.n_head * c.head_dim),
                f"blk.{i}.ffn_norm.weight": (c.n_embd,),
                f"blk.{i}.ffn_gate.weight": (c.n_ff, c.n_embd),
                f"blk.{i}.ffn_up.weight": (c.n_ff, c.n_embd),
                f"blk.{i}.ffn_down.weight": (c.n_embd, c.n_ff),
            })
        return shapes

    def validate(self) -> None:
        """Every tensor the architecture needs is present with the shape the config implies."""
        self.config.validate()
        expected = self.expected_shapes()
        extra = sorted(set(self.tensors) - set(expected))
        if extra:
            raise LutlmError(f"{self.source}: unexpected tensor {extra[0]} (a feature this architecture support lacks)")
        for name, shape in expected.items():
            tensor = self.tensors.get(name)
            if tensor is None:
                raise LutlmError(f"{self.source}: tensor {name} is missing")
            if tuple(tensor.shape) != shape:
                raise LutlmError(f"{self.source}: tensor {name} has shape {tuple(tensor.shape)}, expected {shape}")


def load_checkpoint(source: str | Path, tensors: bool = True) -> Checkpoint:
    """Read a GGUF file, a Hugging Face folder or a quantised checkpoint into a validated Checkpoint.

    With `tensors=False` only the config, tokenizer and chat template are read (fast: no weights).
    """
    from .quant import store

    path = Path(source)
    if path.is_dir() and store.is_quantized(path):
        ckpt, _ = store.read(path, tensors)
    elif path.is_dir():
        from .hf_intake import load_hf

        ckpt = load_hf(path, tensors)
    elif path.is_file():
        from .gguf_intake import load_gguf

        ckpt = load_gguf(path, tensors)
    else:
        raise LutlmError(f"{path}: no such file or directory")
    if tensors:
        ckpt.validate()
    else:
        ckpt.config.validate()
    return ckpt

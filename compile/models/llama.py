"""The Llama architecture: the one place its tensors are named, shaped and mapped from Hugging Face.

Names are llama.cpp's GGUF names, which lutlm keeps through every stage (checkpoint, quantised
folder, package, ONNX initialisers). llama.cpp shares them among its architectures, so a second
architecture's module imports these and adds its own (Qwen2's q/k/v biases, Gemma 3's
`attn_q_norm` or `post_attention_norm`: a subclass of Block with those fields) instead of
repeating them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

ARCHITECTURE = "llama"  # ModelConfig.architecture, as GGUF's general.architecture spells it

EMBEDDING = "token_embd.weight"  # (n_vocab, n_embd) token embeddings; the output head too when tied
OUTPUT_NORM = "output_norm.weight"  # (n_embd,) RMSNorm gain after the last block
OUTPUT = "output.weight"  # (n_vocab, n_embd) output head; absent with tied embeddings

# A block's tensors by kind, as Block's fields: the RMSNorm gains (kept as f32 in every format) and
# the linear layers (quantised), in execution order
NORMS = ("attn_norm", "ffn_norm")
LINEAR = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


class Config(Protocol):
    """The hyperparameters names and shapes follow. lutlm.checkpoint.ModelConfig has them: they are
    declared here so that the model definition imports nothing that imports it."""

    n_layer: int  # transformer blocks
    n_embd: int  # width of the residual stream
    n_head: int  # query heads
    n_head_kv: int  # key and value heads (grouped-query attention when fewer)
    head_dim: int  # width of one head
    n_ff: int  # width of the feed-forward network's hidden layer
    n_vocab: int  # tokens in the vocabulary
    tied_embeddings: bool  # the output head is the embedding


def prefix(i: int | str) -> str:
    """What the names of block `i`'s tensors start with (`i` as a number, or as a name spells it)."""
    return f"blk.{i}."


@dataclass(frozen=True)
class Block:
    """The tensor names of one transformer block, each field named after its llama.cpp role.
    Shapes are (out_features, in_features), with q = n_head * head_dim, kv = n_head_kv * head_dim."""

    attn_norm: str  # (n_embd,) RMSNorm gain before attention
    attn_q: str  # (q, n_embd) query projection, rows in RoPE's adjacent-pair order
    attn_k: str  # (kv, n_embd) key projection, rows in the same order
    attn_v: str  # (kv, n_embd) value projection
    attn_output: str  # (n_embd, q) attention output projection
    ffn_norm: str  # (n_embd,) RMSNorm gain before the feed-forward network
    ffn_gate: str  # (n_ff, n_embd) SwiGLU gate projection
    ffn_up: str  # (n_ff, n_embd) SwiGLU up projection
    ffn_down: str  # (n_embd, n_ff) feed-forward output projection
    qkv: str  # package only: attn_q, attn_k, attn_v stacked by rows, when they share a format
    gate_up: str  # package only: ffn_gate and ffn_up stacked likewise

    @property
    def linear(self) -> tuple[str, ...]:
        """The quantised projections, in execution order."""
        return tuple(getattr(self, role) for role in LINEAR)

    @property
    def fused(self) -> dict[str, tuple[str, ...]]:
        """The package's stacked matrices and their parts: the parts read the same activations,
        so that one matmul can do them all."""
        return {self.qkv: (self.attn_q, self.attn_k, self.attn_v), self.gate_up: (self.ffn_gate, self.ffn_up)}


def block(i: int) -> Block:
    """Block `i`'s tensor names."""
    p = prefix(i)
    return Block(**{role: p + role + ".weight" for role in NORMS + LINEAR}, qkv=p + "qkv", gate_up=p + "gate_up")


def embeddings(config: Config) -> list[str]:
    """The token tables (the embedding, and the output head unless tied): quantised apart from the
    linear layers, to 8 or 4 bits."""
    return [EMBEDDING, *([] if config.tied_embeddings else [OUTPUT])]


def linear_names(config: Config) -> list[str]:
    """Every block's quantised projections, block by block in execution order."""
    return [name for i in range(config.n_layer) for name in block(i).linear]


def norm_names(config: Config) -> list[str]:
    """The RMSNorm gains, kept as f32 in every format."""
    return [OUTPUT_NORM] + [getattr(block(i), role) for i in range(config.n_layer) for role in NORMS]


def tensor_shapes(config: Config) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of `config` holds, with its shape (out_features, in_features)."""
    c = config
    shapes: dict[str, tuple[int, ...]] = {EMBEDDING: (c.n_vocab, c.n_embd), OUTPUT_NORM: (c.n_embd,)}
    if not c.tied_embeddings:
        shapes[OUTPUT] = (c.n_vocab, c.n_embd)
    q, kv = c.n_head * c.head_dim, c.n_head_kv * c.head_dim
    for i in range(c.n_layer):
        b = block(i)
        shapes.update({
            b.attn_norm: (c.n_embd,),
            b.attn_q: (q, c.n_embd),
            b.attn_k: (kv, c.n_embd),
            b.attn_v: (kv, c.n_embd),
            b.attn_output: (c.n_embd, q),
            b.ffn_norm: (c.n_embd,),
            b.ffn_gate: (c.n_ff, c.n_embd),
            b.ffn_up: (c.n_ff, c.n_embd),
            b.ffn_down: (c.n_embd, c.n_ff),
        })
    return shapes


# Hugging Face (transformers' LlamaForCausalLM)
HF_MODEL_TYPE = "llama"  # config.json's model_type, as an export writes it
HF_MODEL_TYPES = (HF_MODEL_TYPE, "mistral")  # read as this architecture (Mistral's is the same network)
HF_CLASS = "LlamaForCausalLM"  # config.json's architectures[0]
HF_GLOBAL = {"model.embed_tokens.weight": EMBEDDING, "model.norm.weight": OUTPUT_NORM, "lm_head.weight": OUTPUT}
# model.layers.{i}.{part}.{weight|bias} -> the part's llama.cpp role in block i
HF_BLOCK = {
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
HF_RECOMPUTED = "rotary_emb.inv_freq"  # the end of the names of RoPE tables that some checkpoints store
_HF_BLOCK_TENSOR = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def from_hf(name: str) -> str | None:
    """The llama.cpp name of a Hugging Face tensor name; None for a name this architecture lacks."""
    if name in HF_GLOBAL:
        return HF_GLOBAL[name]
    m = _HF_BLOCK_TENSOR.match(name)
    if m is None or m.group(2) not in HF_BLOCK:
        return None
    layer, part, kind = m.groups()
    return f"{prefix(layer)}{HF_BLOCK[part]}.{kind}"


def hf_rotate_half(config: Config) -> dict[str, int]:
    """The tensors Hugging Face stores with RoPE's rotate-half row order (pairs i, i + d/2), to be
    permuted into the adjacent pairs (2i, 2i+1) that lutlm and llama.cpp use; with their head counts."""
    heads: dict[str, int] = {}
    for i in range(config.n_layer):
        b = block(i)
        heads |= {b.attn_q: config.n_head, b.attn_k: config.n_head_kv}
    return heads

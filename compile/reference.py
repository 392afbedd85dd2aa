"""The numpy reference forward pass of a Llama-family decoder: the ground truth for every test.

Written to be read, not to be fast: one function per operation, fp32 throughout, the KV cache a
pair of plain arrays. RoPE rotates adjacent pairs (2i, 2i+1), the order GGUF stores Q and K in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .checkpoint import Checkpoint, ModelConfig
from .errors import LutlmError
from .models import architecture


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def rope_tables(config: ModelConfig, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of angle pos * theta^(-2i/n_rot) for each position and rotated pair i."""
    inv_freq = config.rope_theta ** (-np.arange(0, config.n_rot, 2, dtype=np.float64) / config.n_rot)
    angles = positions[:, None].astype(np.float64) * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, n_rot: int) -> np.ndarray:
    """Rotate adjacent pairs of the first n_rot dims of x (tokens, heads, head_dim)."""
    rot = x[..., :n_rot].reshape(*x.shape[:-1], n_rot // 2, 2)
    a, b = rot[..., 0], rot[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    out = np.stack([a * c - b * s, a * s + b * c], axis=-1).reshape(*x.shape[:-1], n_rot)
    return np.concatenate([out, x[..., n_rot:]], axis=-1)


@dataclass
class KVCache:
    """Keys and values of every layer for positions [0, length); capacity fixed at creation."""

    k: np.ndarray  # (n_layer, n_ctx, n_head_kv, head_dim)
    v: np.ndarray
    length: int = 0

    @classmethod
    def empty(cls, config: ModelConfig, n_ctx: int) -> "KVCache":
        shape = (config.n_layer, n_ctx, config.n_head_kv, config.head_dim)
        return cls(np.zeros(shape, np.float32), np.zeros(shape, np.float32))

    @property
    def capacity(self) -> int:
        return self.k.shape[1]


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int) -> np.ndarray:
    """Causal GQA attention of queries at positions start.. over keys/values at 0..start+n-1.

    q: (n, n_head, d); k, v: (T, n_head_kv, d) with T = start + n. Returns (n, n_head * d).
    """
    n, n_head, d = q.shape
    n_kv = k.shape[1]
    group = n_head // n_kv
    qg = q.reshape(n, n_kv, group, d).transpose(1, 2, 0, 3)  # (kv, group, n, d)
    kt = k.transpose(1, 2, 0)  # (kv, d, T)
    scores = (qg @ kt[:, None]) * (1.0 / math.sqrt(d))  # (kv, group, n, T)
    future = np.arange(k.shape[0])[None, :] > (start + np.arange(n))[:, None]
    scores = np.where(future, -np.inf, scores)
    out = softmax(scores) @ v.transpose(1, 0, 2)[:, None]  # (kv, group, n, d)
    return out.transpose(2, 0, 1, 3).reshape(n, n_head * d)


class Reference:
    """Forward pass over a Checkpoint's fp32 weights."""

    def __init__(self, ckpt: Checkpoint):
        self.config = ckpt.config
        self.w = ckpt.tensors  # shared: quantisation swaps weights in place as it goes
        self.arch = architecture(ckpt.config.architecture)  # the module that names the tensors
        self.blocks = [self.arch.block(i) for i in range(ckpt.config.n_layer)]  # each block's tensor names

    @property
    def output(self) -> np.ndarray:
        return self.w.get(self.arch.OUTPUT, self.w[self.arch.EMBEDDING])

    def embed(self, ids: list[int] | np.ndarray) -> np.ndarray:
        """The embeddings of tokens `ids`: the first block's input, (n, n_embd)."""
        return self.w[self.arch.EMBEDDING][np.asarray(ids)]

    def new_cache(self, n_ctx: int | None = None) -> KVCache:
        return KVCache.empty(self.config, n_ctx or self.config.n_ctx)

    # The stages of one transformer block, separately callable so that calibration can collect
    # the input of every linear layer after the layers before it have been quantised.
    def attn_input(self, i: int, x: np.ndarray) -> np.ndarray:
        return rms_norm(x, self.w[self.blocks[i].attn_norm], self.config.rms_eps)

    def attend(self, i: int, h: np.ndarray, cos: np.ndarray, sin: np.ndarray,
               k_cache: np.ndarray, v_cache: np.ndarray, start: int) -> np.ndarray:
        """Q/K/V projections, RoPE, cache update and causal attention; the input of the output projection."""
        c, b, n = self.config, self.blocks[i], len(h)
        q = (h @ self.w[b.attn_q].T).reshape(n, c.n_head, c.head_dim)
        k = (h @ self.w[b.attn_k].T).reshape(n, c.n_head_kv, c.head_dim)
        v = (h @ self.w[b.attn_v].T).reshape(n, c.n_head_kv, c.head_dim)
        k_cache[start : start + n] = apply_rope(k, cos, sin, c.n_rot)
        v_cache[start : start + n] = v
        q = apply_rope(q, cos, sin, c.n_rot)
        return attention(q, k_cache[: start + n], v_cache[: start + n], start)

    def ffn_input(self, i: int, x: np.ndarray) -> np.ndarray:
        return rms_norm(x, self.w[self.blocks[i].ffn_norm], self.config.rms_eps)

    def ffn_hidden(self, i: int, h: np.ndarray) -> np.ndarray:
        """SwiGLU activation: the input of the down projection."""
        b = self.blocks[i]
        return silu(h @ self.w[b.ffn_gate].T) * (h @ self.w[b.ffn_up].T)

    def linear(self, name: str, x: np.ndarray) -> np.ndarray:
        return x @ self.w[name].T

    def block(self, i: int, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, cache: KVCache, start: int) -> np.ndarray:
        att = self.attend(i, self.attn_input(i, x), cos, sin, cache.k[i], cache.v[i], start)
        x = x + self.linear(self.blocks[i].attn_output, att)
        return x + self.linear(self.blocks[i].ffn_down, self.ffn_hidden(i, self.ffn_input(i, x)))

    def head(self, x: np.ndarray) -> np.ndarray:
        return rms_norm(x, self.w[self.arch.OUTPUT_NORM], self.config.rms_eps) @ self.output.T

    def forward(self, ids: list[int] | np.ndarray, cache: KVCache, all_logits: bool = False) -> np.ndarray:
        """Run tokens `ids` at positions cache.length.., append them to the cache, return logits.

        Logits are (n, vocab) with `all_logits`, else those of the last token only (vocab,).
        """
        c = self.config
        ids = np.asarray(ids, dtype=np.int64)
        n, start = len(ids), cache.length
        if n == 0:
            raise LutlmError("forward needs at least one token")
        if start + n > cache.capacity:
            raise LutlmError(f"{start + n} tokens exceed the context of {cache.capacity}")
        if ids.min() < 0 or ids.max() >= c.n_vocab:
            raise LutlmError(f"token id out of range [0, {c.n_vocab})")
        cos, sin = rope_tables(c, np.arange(start, start + n))
        x = self.embed(ids)
        for i in range(c.n_layer):
            x = self.block(i, x, cos, sin, cache, start)
        cache.length = start + n
        logits = self.head(x if all_logits else x[-1:])
        return logits if all_logits else logits[0]

    def generate_greedy(self, prompt: list[int], max_tokens: int, stop_ids: set[int],
                        n_ctx: int | None = None) -> Iterator[int]:
        """Yield greedy tokens after `prompt` until a stop id (not yielded), max_tokens or a full context."""
        if not prompt:
            raise LutlmError("the prompt is empty")
        cache = self.new_cache(n_ctx)
        if len(prompt) >= cache.capacity:
            raise LutlmError(f"the prompt has {len(prompt)} tokens; the context holds {cache.capacity}")
        logits = self.forward(prompt, cache)
        for _ in range(max_tokens):
            token = int(np.argmax(logits))
            if token in stop_ids:
                return
            yield token
            if cache.length >= cache.capacity:
                return
            logits = self.forward([token], cache)

"""Causal attention over the KV cache with grouped-query heads, as TIR: one kernel for decode
(m = 1) and for prefill chunks (m tokens at positions pos..pos+m-1, each seeing positions up to
its own).

One workgroup per (query head, token). Its invocations first split the positions between them
(scores into a scratch row, the maximum by a tree reduction in workgroup memory), then the
exponentials and their sum the same way, then split the head dimensions for the weighted sum of
values. The cache layouts are those `layers.rope_append` writes.
"""

from __future__ import annotations

import math
from typing import Any

from tvm.script import tirx as T

from .reduce import add, tree

WG = 64
tree_max, tree_sum = tree(WG, T.max), tree(WG, add)


def attention(heads: int, kv_heads: int, head_dim: int, q_stride: int) -> Any:
    """Token t's query heads start at q[t*q_stride] (the front of a fused qkv row); the output is
    (m, heads * head_dim)."""
    group = heads // kv_heads
    scale = 1.0 / math.sqrt(head_dim)

    @T.prim_func
    def f(q_h: T.handle, kc_h: T.handle, vc_h: T.handle, s_h: T.handle, o_h: T.handle,
          m: T.int32, pos: T.int32, ctx: T.int32):
        T.func_attr({"tirx.noalias": True})
        q = T.match_buffer(q_h, (m * q_stride,), "float32")
        kc = T.match_buffer(kc_h, (kv_heads, head_dim, ctx), "float32")
        vc = T.match_buffer(vc_h, (kv_heads, ctx, head_dim), "float32")
        scores = T.match_buffer(s_h, (m, heads, ctx), "float32")
        out = T.match_buffer(o_h, (m * heads * head_dim,), "float32")
        for t in T.thread_binding(m, thread="blockIdx.y"):
            for h in T.thread_binding(heads, thread="blockIdx.x"):
                for tid in T.thread_binding(WG, thread="threadIdx.x"):
                    red = T.alloc_buffer((WG,), "float32", scope="shared")
                    qv = T.alloc_buffer((head_dim,), "float32", scope="local")
                    acc = T.alloc_buffer((2,), "float32", scope="local")
                    n = T.min(pos + t + 1, ctx)  # positions this token sees
                    for d in T.unroll(head_dim):
                        qv[d] = q[t * q_stride + h * head_dim + d] * T.float32(scale)
                    # 1. scores and their maximum
                    acc[1] = T.float32(-3.0e38)
                    for i in range((n + WG - 1) // WG):
                        if i * WG + tid < n:
                            acc[0] = T.float32(0)
                            for d in T.unroll(head_dim):
                                acc[0] = acc[0] + qv[d] * kc[h // group, d, i * WG + tid]
                            scores[t, h, i * WG + tid] = acc[0]
                            acc[1] = T.max(acc[1], acc[0])
                    red[tid] = acc[1]
                    tree_max(red, tid)
                    acc[1] = red[0]
                    T.tvm_storage_sync("shared")
                    # 2. exponentials and their sum
                    acc[0] = T.float32(0)
                    for i in range((n + WG - 1) // WG):
                        if i * WG + tid < n:
                            scores[t, h, i * WG + tid] = T.exp(scores[t, h, i * WG + tid] - acc[1])
                            acc[0] = acc[0] + scores[t, h, i * WG + tid]
                    red[tid] = acc[0]
                    tree_sum(red, tid)
                    # 3. the weighted sum of values, one invocation per head dimension
                    for c in range((head_dim + WG - 1) // WG):
                        if c * WG + tid < head_dim:
                            acc[0] = T.float32(0)
                            for i in range(n):
                                acc[0] = acc[0] + scores[t, h, i] * vc[h // group, i, c * WG + tid]
                            out[(t * heads + h) * head_dim + c * WG + tid] = acc[0] / red[0]
    return f

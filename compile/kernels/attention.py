"""Causal attention over the KV cache with grouped-query heads, as TIR: one kernel for decode
(m = 1) and for prefill chunks (m tokens at positions pos..pos+m-1, each seeing positions up to
its own).

One invocation per (query head, token), with no workgroup memory and no barriers: it walks the
positions once with an online softmax (running maximum and sum, FlashAttention's rescaling),
holding its query and its output row in registers. Invocations of a workgroup are consecutive
tokens of one head, so they read the same key and value at each step (one load for all SIMD
lanes on a software GPU, since the head comes from the workgroup id). The workgroup-per-head design with tree reductions it replaces spent
6.8 s per 64-token prefill chunk at position 384 on lavapipe, more than the chunk's GEMMs.

A decode step has one token, so that design would keep 9 invocations busy (one per head) over
the whole context; `split` keeps the workgroup per (head, token) whose invocations share the
positions (scores in a scratch row, tree reductions for the maximum and the sum) for it.
The cache layouts are those `layers.rope_append` writes.
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
    def f(q_h: T.handle, kc_h: T.handle, vc_h: T.handle, o_h: T.handle, m: T.int32, pos: T.int32, ctx: T.int32):
        T.func_attr({"tirx.noalias": True})
        q = T.match_buffer(q_h, (m * q_stride,), "float32")
        kc = T.match_buffer(kc_h, (kv_heads, head_dim, ctx), "float32")
        vc = T.match_buffer(vc_h, (kv_heads, ctx, head_dim), "float32")
        out = T.match_buffer(o_h, (m * heads * head_dim,), "float32")
        for h in T.thread_binding(heads, thread="blockIdx.y"):
            for bx in T.thread_binding((m + WG - 1) // WG, thread="blockIdx.x"):
                for tx in T.thread_binding(WG, thread="threadIdx.x"):
                    qv = T.alloc_buffer((head_dim,), "float32", scope="local")
                    acc = T.alloc_buffer((head_dim,), "float32", scope="local")
                    st = T.alloc_buffer((4,), "float32", scope="local")  # score, running max, running sum, rescale
                    t = bx * WG + tx
                    if t < m:
                        for d in T.unroll(head_dim):
                            qv[d] = q[t * q_stride + h * head_dim + d] * T.float32(scale)
                            acc[d] = T.float32(0)
                        st[1] = T.float32(-3.0e38)
                        st[2] = T.float32(0)
                        for i in range(T.min(pos + t + 1, ctx)):  # the positions this token sees
                            st[0] = T.float32(0)
                            for d in T.unroll(head_dim):
                                st[0] = st[0] + qv[d] * kc[h // group, d, i]
                            st[3] = T.exp(st[1] - T.max(st[1], st[0]))
                            st[1] = T.max(st[1], st[0])
                            st[0] = T.exp(st[0] - st[1])
                            st[2] = st[2] * st[3] + st[0]
                            for d in T.unroll(head_dim):
                                acc[d] = acc[d] * st[3] + st[0] * vc[h // group, i, d]
                        for d in T.unroll(head_dim):
                            out[(t * heads + h) * head_dim + d] = acc[d] / st[2]
    return f


def split(heads: int, kv_heads: int, head_dim: int, q_stride: int) -> Any:
    """The same attention for few tokens: one workgroup per (head, token) whose invocations split
    the positions (scores into `scores`, (m, heads, ctx)), then the head dimensions."""
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

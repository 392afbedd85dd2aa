"""Causal attention over the KV cache with grouped-query heads, as TIR.

Prefill (`attention`, m tokens at positions pos..pos+m-1, each seeing positions up to its own):
one invocation per (kv head, token) for the query heads sharing that kv head, with no workgroup
memory and no barriers. It walks the positions once with an online softmax (running maximum and
sum, FlashAttention's rescaling), holding its queries and output rows in registers. Invocations of
a workgroup are consecutive tokens of one kv head, so they read the same key and value at each
step. The workgroup-per-head design with tree reductions it replaced spent 6.8 s per 64-token
prefill chunk at position 384 on lavapipe, more than the chunk's GEMMs.

Decode (one token) would keep only one invocation per head busy with that kernel, walking the
whole cache alone: on software WebGPU a load costs about the same for one SIMD lane as for four,
so decode runs two barrier-free kernels whose lanes all load: `scores` (an invocation per kv head
and position) and `attend` (an invocation per four head dimensions of a query head). They need
head_dim % 4 == 0 (values, queries and the output are read four floats per load).

The cache layouts are those `layers.rope_append` writes.
"""

from __future__ import annotations

import math
from typing import Any

from tvm.script import tirx as T

from .subgroups import SHARE, broadcast, slot

WG = 64
PREFILL_WG = 16  # tokens per workgroup in prefill attention: with few kv heads, enough workgroups for every core


def attention(heads: int, kv_heads: int, head_dim: int, q_stride: int, subgroups: bool = False) -> Any:
    """Token t's query heads start at q[t*q_stride] (the front of a fused qkv row); the output is
    (m, heads * head_dim). An invocation takes one token's query heads that share a kv head, so
    each key and value it loads serves all of them (software WebGPU pays per load per lane: with
    an invocation per query head, a 64-token chunk at position 380 spent 20% of its time here).
    `subgroups`: every lane of a workgroup reads the same key and value, so each of SHARE lanes
    loads a quarter of their dimensions and broadcasts them; broadcasts need the whole subgroup, so
    every lane walks as far as the workgroup's last token (its own updates masked beyond its own
    position) and lanes past the chunk's end compute the last token without storing it."""
    if subgroups and head_dim % SHARE:
        raise ValueError(f"subgroup attention shares head dimensions {SHARE} at a time; {head_dim} is not a multiple")
    group = heads // kv_heads
    scale = 1.0 / math.sqrt(head_dim)
    share = head_dim // SHARE

    def masked(valid: Any, value: Any, otherwise: Any) -> Any:
        """`value` where this lane's token sees the position (always, without subgroups)."""
        return T.Select(valid, value, otherwise) if subgroups else value

    @T.prim_func
    def f(q_h: T.handle, kc_h: T.handle, vc_h: T.handle, o_h: T.handle, m: T.int32, pos: T.int32, ctx: T.int32):
        T.func_attr({"tirx.noalias": True})
        q = T.match_buffer(q_h, (m * q_stride,), "float32")
        kc = T.match_buffer(kc_h, (kv_heads, head_dim, ctx), "float32")
        vc = T.match_buffer(vc_h, (kv_heads, ctx, head_dim), "float32")
        out = T.match_buffer(o_h, (m * heads * head_dim,), "float32")
        for hk in T.thread_binding(kv_heads, thread="blockIdx.y"):
            for bx in T.thread_binding((m + PREFILL_WG - 1) // PREFILL_WG, thread="blockIdx.x"):
                for tx in T.thread_binding(PREFILL_WG, thread="threadIdx.x"):
                    qv = T.alloc_buffer((group * head_dim,), "float32", scope="local")
                    acc = T.alloc_buffer((group * head_dim,), "float32", scope="local")
                    # per query head: score, running max, running sum, rescale
                    st = T.alloc_buffer((group * 4,), "float32", scope="local")
                    kv = T.alloc_buffer((1,), "float32", scope="local")  # a key or value element, loaded once
                    own = T.alloc_buffer((share,), "float32", scope="local")  # subgroups: this lane's loads
                    t = T.min(bx * PREFILL_WG + tx, m - 1) if subgroups else bx * PREFILL_WG + tx
                    # the positions walked: the token's own, or with subgroups the workgroup's last token's
                    last = T.min(bx * PREFILL_WG + PREFILL_WG - 1, m - 1) if subgroups else t
                    if subgroups or t < m:
                        for j in T.unroll(group):
                            for d in T.unroll(head_dim):
                                qv[j * head_dim + d] = q[t * q_stride + (hk * group + j) * head_dim + d] * T.float32(scale)
                                acc[j * head_dim + d] = T.float32(0)
                            st[j * 4 + 1] = T.float32(-3.0e38)
                            st[j * 4 + 2] = T.float32(0)
                        for i in range(T.min(pos + last + 1, ctx)):
                            for j in T.unroll(group):
                                st[j * 4] = T.float32(0)
                            if subgroups:
                                for e in T.unroll(share):
                                    own[e] = kc[hk, e * SHARE + slot(), i]
                            for d in T.unroll(head_dim):
                                kv[0] = broadcast(own[d // SHARE], d % SHARE) if subgroups else kc[hk, d, i]
                                for j in T.unroll(group):
                                    st[j * 4] = st[j * 4] + qv[j * head_dim + d] * kv[0]
                            for j in T.unroll(group):  # past its own position a lane keeps max, sum and acc
                                st[j * 4 + 3] = T.exp(st[j * 4 + 1] - masked(i <= pos + t, T.max(st[j * 4 + 1], st[j * 4]), st[j * 4 + 1]))
                                st[j * 4 + 1] = masked(i <= pos + t, T.max(st[j * 4 + 1], st[j * 4]), st[j * 4 + 1])
                                st[j * 4] = masked(i <= pos + t, T.exp(st[j * 4] - st[j * 4 + 1]), T.float32(0))
                                st[j * 4 + 2] = st[j * 4 + 2] * st[j * 4 + 3] + st[j * 4]
                            if subgroups:
                                for e in T.unroll(share):
                                    own[e] = vc[hk, i, e * SHARE + slot()]
                            for d in T.unroll(head_dim):
                                kv[0] = broadcast(own[d // SHARE], d % SHARE) if subgroups else vc[hk, i, d]
                                for j in T.unroll(group):
                                    acc[j * head_dim + d] = acc[j * head_dim + d] * st[j * 4 + 3] + st[j * 4] * kv[0]
                        if bx * PREFILL_WG + tx < m:
                            for j in T.unroll(group):
                                for d in T.unroll(head_dim):
                                    out[(t * heads + hk * group + j) * head_dim + d] = acc[j * head_dim + d] / st[j * 4 + 2]
    return f


def scores(heads: int, kv_heads: int, head_dim: int, q_stride: int) -> Any:
    """Decode (one token at position pos), part 1: scores[h, i] = q_h . k_i / sqrt(head_dim) for
    every position i <= pos. One invocation per (kv head, position) computes the scores of all
    query heads sharing that kv head, so each key is loaded once; neighbouring invocations read
    neighbouring positions of the transposed key cache (one vector load for the SIMD lanes of a
    software GPU), and the query is read four dimensions per load."""
    group = heads // kv_heads
    scale = 1.0 / math.sqrt(head_dim)

    @T.prim_func
    def f(q_h: T.handle, kc_h: T.handle, s_h: T.handle, pos: T.int32, ctx: T.int32):
        T.func_attr({"tirx.noalias": True})
        q = T.match_buffer(q_h, (q_stride // 4,), "float32x4")
        kc = T.match_buffer(kc_h, (kv_heads, head_dim, ctx), "float32")
        sc = T.match_buffer(s_h, (heads, ctx), "float32")
        for kvh in T.thread_binding(kv_heads, thread="blockIdx.y"):
            for bx in T.thread_binding((T.min(pos + 1, ctx) + WG - 1) // WG, thread="blockIdx.x"):
                for tx in T.thread_binding(WG, thread="threadIdx.x"):
                    acc = T.alloc_buffer((group,), "float32", scope="local")
                    qv = T.alloc_buffer((group,), "float32x4", scope="local")
                    kv = T.alloc_buffer((1,), "float32", scope="local")
                    i = bx * WG + tx
                    if i < T.min(pos + 1, ctx):
                        for g in T.unroll(group):
                            acc[g] = T.float32(0)
                        for d4 in T.unroll(head_dim // 4):
                            for g in T.unroll(group):
                                qv[g] = q[(kvh * group + g) * (head_dim // 4) + d4]
                            for j in T.unroll(4):
                                kv[0] = kc[kvh, d4 * 4 + j, i]
                                for g in T.unroll(group):
                                    acc[g] = acc[g] + T.Shuffle([qv[g]], [j]) * kv[0]
                        for g in T.unroll(group):
                            sc[kvh * group + g, i] = acc[g] * T.float32(scale)
    return f


def attend(heads: int, kv_heads: int, head_dim: int) -> Any:
    """Decode, part 2: out_h = softmax(scores[h, :pos+1]) . V. A workgroup per query head, an
    invocation per four head dimensions: each walks the scores twice (maximum, then weights;
    every lane reads the same score) and accumulates four value dimensions per load."""
    group = heads // kv_heads
    lanes = head_dim // 4

    @T.prim_func
    def f(s_h: T.handle, vc_h: T.handle, o_h: T.handle, pos: T.int32, ctx: T.int32):
        T.func_attr({"tirx.noalias": True})
        sc = T.match_buffer(s_h, (heads, ctx), "float32")
        vc = T.match_buffer(vc_h, (kv_heads, ctx, lanes), "float32x4")
        out = T.match_buffer(o_h, (heads * lanes,), "float32x4")
        for h in T.thread_binding(heads, thread="blockIdx.x"):
            for tx in T.thread_binding(lanes, thread="threadIdx.x"):
                acc = T.alloc_buffer((1,), "float32x4", scope="local")
                st = T.alloc_buffer((3,), "float32", scope="local")  # maximum, sum, weight
                st[0] = T.float32(-3.0e38)
                for i in range(T.min(pos + 1, ctx)):
                    st[0] = T.max(st[0], sc[h, i])
                st[1] = T.float32(0)
                acc[0] = T.Broadcast(T.float32(0), 4)
                for i in range(T.min(pos + 1, ctx)):
                    st[2] = T.exp(sc[h, i] - st[0])
                    st[1] = st[1] + st[2]
                    acc[0] = acc[0] + T.Broadcast(st[2], 4) * vc[h // group, i, tx]
                out[h * lanes + tx] = acc[0] / T.Broadcast(st[1], 4)
    return f

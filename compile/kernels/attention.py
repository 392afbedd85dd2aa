"""Causal attention over the KV cache with grouped-query heads, as TIR.

Prefill (`attention`, m tokens at positions pos..pos+m-1, each seeing positions up to its own):
one invocation per (kv head, token) for the query heads sharing that kv head, with no workgroup
memory and no barriers. It walks the positions once with an online softmax (running maximum and
sum, FlashAttention's rescaling), holding its queries and output rows in registers. Invocations of
a workgroup are consecutive tokens of one kv head, so they read the same key and value at each
step. It replaced a workgroup per head with tree reductions, which had cost more than the
chunk's GEMMs (docs/kernels.md).

Decode (one token) would keep only one invocation per kv head busy with that kernel, walking the
whole cache alone, so decode splits the cache: `split` (an invocation per kv head and SPLIT
positions, an online softmax over them) and `merge` (an invocation per four head dimensions of a
query head, combining the splits). They need head_dim % 4 == 0 (values, queries and the output
are read four floats per load).

The cache layouts are those `layers.rope_append` writes.
"""

from __future__ import annotations

import math
from typing import Any

from tvm.script import tirx as T

from .subgroups import SHARE, broadcast, slot

PREFILL_WG = 16  # tokens per workgroup in prefill attention: with few kv heads, enough workgroups for every core


def attention(heads: int, kv_heads: int, head_dim: int, q_stride: int, subgroups: bool = False) -> Any:
    """Token t's query heads start at q[t*q_stride] (the front of a fused qkv row); the output is
    (m, heads * head_dim). An invocation takes one token's query heads that share a kv head, so
    each key and value it loads serves all of them (software WebGPU pays per load per lane: with
    an invocation per query head, every head loaded every key and value for itself, and long
    prompts spent a large share of each prefill chunk here; docs/kernels.md).
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


# Decode: positions per invocation of `split`. More positions per invocation load the query less
# often but leave fewer invocations at a short context: 16 measured the balance between a long
# context (where 32 was a little faster) and a short one (where 32 was slower than 8 or 16). The
# runs, and the scores + values kernels split + merge replaced, are in docs/kernels.md
# (`lutlm bench step --pos P`).
SPLIT = 16
SPLIT_WG = 4  # decode: invocations per workgroup of `split` (one SIMD batch of a software GPU)


def splits(ctx: Any) -> Any:
    """Rows of `split`'s output per query head: one per SPLIT positions of the cache. `ctx` is a
    number, a TIR expression or (for the plan's buffer sizes) the text of a package expression."""
    if isinstance(ctx, str):
        return f"(({ctx} + {SPLIT - 1}) // {SPLIT})"
    return (ctx + SPLIT - 1) // SPLIT


def split(heads: int, kv_heads: int, head_dim: int, q_stride: int) -> Any:
    """Decode (one token at position pos), part 1: an invocation per (kv head, SPLIT consecutive
    positions) walks them once with an online softmax for the query heads sharing that kv head
    (FlashDecoding's split of the cache), each key and value loaded once for all of them and the
    queries once per SPLIT positions. It leaves per query head and split the unnormalised output
    in `part` and the running maximum and sum in `stat`. Software WebGPU pays per load per lane:
    the kernels this replaced, scores with an invocation per position then an invocation per
    four output dimensions, loaded the query at every position and the scores and values once per
    four dimensions: counted per position, 3.9x the loads."""
    group = heads // kv_heads
    lanes = head_dim // 4
    scale = 1.0 / math.sqrt(head_dim)

    @T.prim_func
    def f(q_h: T.handle, kc_h: T.handle, vc_h: T.handle, p_h: T.handle, s_h: T.handle, pos: T.int32, ctx: T.int32):
        T.func_attr({"tirx.noalias": True})
        q = T.match_buffer(q_h, (q_stride // 4,), "float32x4")
        kc = T.match_buffer(kc_h, (kv_heads, head_dim, ctx), "float32")
        vc = T.match_buffer(vc_h, (kv_heads, ctx, lanes), "float32x4")
        part = T.match_buffer(p_h, (heads * splits(ctx) * lanes,), "float32x4")
        stat = T.match_buffer(s_h, (heads * splits(ctx) * 2,), "float32")
        for kvh in T.thread_binding(kv_heads, thread="blockIdx.y"):
            for bx in T.thread_binding((splits(T.min(pos + 1, ctx)) + SPLIT_WG - 1) // SPLIT_WG, thread="blockIdx.x"):
                for tx in T.thread_binding(SPLIT_WG, thread="threadIdx.x"):
                    qv = T.alloc_buffer((group * lanes,), "float32x4", scope="local")
                    acc = T.alloc_buffer((group * lanes,), "float32x4", scope="local")
                    st = T.alloc_buffer((group * 4,), "float32", scope="local")  # per query head: score, max, sum, rescale
                    kv = T.alloc_buffer((1,), "float32", scope="local")
                    vv = T.alloc_buffer((1,), "float32x4", scope="local")
                    sp = bx * SPLIT_WG + tx
                    n = T.min(pos + 1, ctx)  # positions in the cache
                    if sp * SPLIT < n:
                        for g in T.unroll(group):
                            for d4 in T.unroll(lanes):
                                qv[g * lanes + d4] = q[(kvh * group + g) * lanes + d4] * T.Broadcast(T.float32(scale), 4)
                                acc[g * lanes + d4] = T.Broadcast(T.float32(0), 4)
                            st[g * 4 + 1] = T.float32(-3.0e38)
                            st[g * 4 + 2] = T.float32(0)
                        for i in range(sp * SPLIT, T.min(sp * SPLIT + SPLIT, n)):
                            for g in T.unroll(group):
                                st[g * 4] = T.float32(0)
                            for d4 in T.unroll(lanes):
                                for j in T.unroll(4):
                                    kv[0] = kc[kvh, d4 * 4 + j, i]
                                    for g in T.unroll(group):
                                        st[g * 4] = st[g * 4] + T.Shuffle([qv[g * lanes + d4]], [j]) * kv[0]
                            for g in T.unroll(group):
                                st[g * 4 + 3] = T.exp(st[g * 4 + 1] - T.max(st[g * 4 + 1], st[g * 4]))
                                st[g * 4 + 1] = T.max(st[g * 4 + 1], st[g * 4])
                                st[g * 4] = T.exp(st[g * 4] - st[g * 4 + 1])
                                st[g * 4 + 2] = st[g * 4 + 2] * st[g * 4 + 3] + st[g * 4]
                            for d4 in T.unroll(lanes):
                                vv[0] = vc[kvh, i, d4]
                                for g in T.unroll(group):
                                    acc[g * lanes + d4] = acc[g * lanes + d4] * T.Broadcast(st[g * 4 + 3], 4) \
                                        + T.Broadcast(st[g * 4], 4) * vv[0]
                        for g in T.unroll(group):
                            row = (kvh * group + g) * splits(ctx) + sp  # this query head's row for the split
                            for d4 in T.unroll(lanes):
                                part[row * lanes + d4] = acc[g * lanes + d4]
                            stat[row * 2] = st[g * 4 + 1]
                            stat[row * 2 + 1] = st[g * 4 + 2]
    return f


def merge(heads: int, head_dim: int) -> Any:
    """Decode, part 2: out_h = the splits' outputs weighted by exp(their maximum - the overall
    maximum), over the same weighting of their sums. A workgroup per query head, an invocation
    per four output dimensions."""
    lanes = head_dim // 4

    @T.prim_func
    def f(p_h: T.handle, s_h: T.handle, o_h: T.handle, pos: T.int32, ctx: T.int32):
        T.func_attr({"tirx.noalias": True})
        part = T.match_buffer(p_h, (heads * splits(ctx) * lanes,), "float32x4")
        stat = T.match_buffer(s_h, (heads * splits(ctx) * 2,), "float32")
        out = T.match_buffer(o_h, (heads * lanes,), "float32x4")
        for h in T.thread_binding(heads, thread="blockIdx.x"):
            for tx in T.thread_binding(lanes, thread="threadIdx.x"):
                acc = T.alloc_buffer((1,), "float32x4", scope="local")
                st = T.alloc_buffer((3,), "float32", scope="local")  # maximum, sum, weight
                used = splits(T.min(pos + 1, ctx))  # the splits `split` wrote for this step
                st[0] = T.float32(-3.0e38)
                for sp in range(used):
                    st[0] = T.max(st[0], stat[(h * splits(ctx) + sp) * 2])
                st[1] = T.float32(0)
                acc[0] = T.Broadcast(T.float32(0), 4)
                for sp in range(used):
                    row = h * splits(ctx) + sp
                    st[2] = T.exp(stat[row * 2] - st[0])
                    st[1] = st[1] + st[2] * stat[row * 2 + 1]
                    acc[0] = acc[0] + T.Broadcast(st[2], 4) * part[row * lanes + tx]
                out[h * lanes + tx] = acc[0] / T.Broadcast(st[1], 4)
    return f

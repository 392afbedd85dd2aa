"""The elementwise and per-token operators of a Llama block, as TIR.

One invocation per output element or per row: on software WebGPU (invocations are SIMD lanes of a
CPU) that beats workgroup reductions with barriers, and these kernels are a small share of a
decode step next to the weight matmuls and attention.
"""

from __future__ import annotations

from typing import Any

from tvm.script import tirx as T

from .matmul import ROWS, _f16


def embed(k: int, bits: int, group: int, dense: bool = False) -> Any:
    """x[t, :] = dequantised row ids[t] of the quantised embedding, in the layout the tied output
    head reads too: bit-planes, or `dense` codes (`bits` wide, 32/bits per u32). An id outside
    the vocabulary reads row 0, never past the end."""
    per = 32 // bits
    w_dims = (k // per,) if dense else (k // 32, bits)  # then the row index

    @T.prim_func
    def f(ids_h: T.handle, w_h: T.handle, sm_h: T.handle, x_h: T.handle, m: T.int32, n: T.int32):
        T.func_attr({"tirx.noalias": True})
        ids = T.match_buffer(ids_h, (m,), "int32")
        w = T.match_buffer(w_h, w_dims + (n,), "uint32")
        sm = T.match_buffer(sm_h, (k // group, n), "uint32")
        x = T.match_buffer(x_h, (m, k), "float32")
        for bx in T.thread_binding((m * k + ROWS - 1) // ROWS, thread="blockIdx.x"):
            for tx in T.thread_binding(ROWS, thread="threadIdx.x"):
                q = T.alloc_buffer((1,), "uint32", scope="local")
                row = T.alloc_buffer((1,), "int32", scope="local")
                e = bx * ROWS + tx
                if e < m * k:
                    row[0] = T.Select(ids[e // k] >= 0 and ids[e // k] < n, ids[e // k], 0)
                    if dense:
                        q[0] = (w[e % k // per, row[0]] >> T.Cast("uint32", e % per * bits)) & T.uint32((1 << bits) - 1)
                    else:
                        q[0] = T.uint32(0)
                        for j in T.unroll(bits):
                            q[0] = q[0] | (((w[e % k // 32, j, row[0]] >> T.Cast("uint32", e % 32)) & T.uint32(1)) << T.uint32(j))
                    x[e // k, e % k] = T.Cast("float32", q[0]) * _f16(sm[e % k // group, row[0]]) \
                        + _f16(sm[e % k // group, row[0]], high=True)
    return f


def rms_norm(d: int, residual: bool = False, unroll: int = 4) -> Any:
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight; one invocation per token. With
    `residual`, x[t] += y[t] first: every residual add is followed by a norm, so one dispatch does
    both, a dispatch and a pass over x fewer (docs/kernels.md). Without it, y is unused and TVM
    leaves it out of the bindings. Both walks over d take `unroll` elements per iteration
    (SwiftShader pays per loop iteration); d % unroll elements are left to a short tail loop."""
    full = d // unroll * unroll

    @T.macro
    def add_square(x, y, ss, t, i):
        if residual:
            x[t, i] = x[t, i] + y[t, i]
        ss[0] = ss[0] + x[t, i] * x[t, i]

    @T.macro
    def normalise(x, weight, out, ss, t, i):
        out[t, i] = x[t, i] * ss[0] * weight[i]

    @T.prim_func
    def f(x_h: T.handle, y_h: T.handle, w_h: T.handle, out_h: T.handle, m: T.int32, eps: T.float32):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (m, d), "float32")
        y = T.match_buffer(y_h, (m, d), "float32")
        weight = T.match_buffer(w_h, (d,), "float32")
        out = T.match_buffer(out_h, (m, d), "float32")
        for bx in T.thread_binding((m + ROWS - 1) // ROWS, thread="blockIdx.x"):
            for tx in T.thread_binding(ROWS, thread="threadIdx.x"):
                ss = T.alloc_buffer((1,), "float32", scope="local")
                t = bx * ROWS + tx
                if t < m:
                    ss[0] = T.float32(0)
                    for i in range(d // unroll):
                        for j in T.unroll(unroll):
                            add_square(x, y, ss, t, i * unroll + j)
                    for i in range(d - full):
                        add_square(x, y, ss, t, full + i)
                    ss[0] = T.rsqrt(ss[0] / T.float32(d) + eps)
                    for i in range(d // unroll):
                        for j in T.unroll(unroll):
                            normalise(x, weight, out, ss, t, i * unroll + j)
                    for i in range(d - full):
                        normalise(x, weight, out, ss, t, full + i)
    return f


def rope_append(heads: int, kv_heads: int, head_dim: int, n_rot: int, stride: int) -> Any:
    """Rotary embedding of m tokens' queries and keys, and the keys and values stored in a
    layer's cache, in one dispatch. Token t's row qkv[t*stride:] holds q (heads), k and v
    (kv_heads each) in that order. Adjacent pairs (2i, 2i+1), i < n_rot/2, turn by the angle of
    position pos + t from a (ctx, n_rot/2, 2) cos/sin table the runtime fills once; q turns in
    place. The cache holds keys transposed as (kv_heads, head_dim, ctx), so attention's score
    loop reads consecutive positions, and values as (kv_heads, ctx, head_dim), so its output loop
    reads consecutive dimensions. One invocation per pair of dimensions of a q or k head."""
    half, pairs, both = head_dim // 2, n_rot // 2, heads + kv_heads
    v_offset = (heads + kv_heads) * head_dim

    @T.prim_func
    def f(qkv_h: T.handle, cs_h: T.handle, kc_h: T.handle, vc_h: T.handle, m: T.int32, pos: T.int32, ctx: T.int32):
        T.func_attr({"tirx.noalias": True})
        qkv = T.match_buffer(qkv_h, (m * stride,), "float32")
        cs = T.match_buffer(cs_h, (ctx, pairs, 2), "float32")
        kc = T.match_buffer(kc_h, (kv_heads, head_dim, ctx), "float32")
        vc = T.match_buffer(vc_h, (kv_heads, ctx, head_dim), "float32")
        for bx in T.thread_binding((m * both * half + ROWS - 1) // ROWS, thread="blockIdx.x"):
            for tx in T.thread_binding(ROWS, thread="threadIdx.x"):
                a = T.alloc_buffer((2,), "float32", scope="local")
                e = bx * ROWS + tx
                t = e // (both * half)
                hh = e // half % both  # q heads first, then k heads
                i = e % half
                at = t * stride + hh * head_dim + 2 * i
                if e < m * both * half and pos + t < ctx:
                    a[0] = qkv[at]
                    a[1] = qkv[at + 1]
                    if i < pairs:
                        qkv[at] = a[0] * cs[pos + t, i, 0] - a[1] * cs[pos + t, i, 1]
                        qkv[at + 1] = a[0] * cs[pos + t, i, 1] + a[1] * cs[pos + t, i, 0]
                    if hh >= heads:
                        kc[hh - heads, 2 * i, pos + t] = qkv[at]
                        kc[hh - heads, 2 * i + 1, pos + t] = qkv[at + 1]
                        vc[hh - heads, pos + t, 2 * i] = qkv[t * stride + v_offset + (hh - heads) * head_dim + 2 * i]
                        vc[hh - heads, pos + t, 2 * i + 1] = qkv[t * stride + v_offset + (hh - heads) * head_dim + 2 * i + 1]
    return f


def swiglu(ff: int) -> Any:
    """act[t, i] = silu(gu[t, i]) * gu[t, ff + i]: gate and up are the two halves of a fused row."""

    @T.prim_func
    def f(gu_h: T.handle, act_h: T.handle, m: T.int32):
        T.func_attr({"tirx.noalias": True})
        gu = T.match_buffer(gu_h, (m * 2 * ff,), "float32")
        act = T.match_buffer(act_h, (m * ff,), "float32")
        for bx in T.thread_binding((m * ff + ROWS - 1) // ROWS, thread="blockIdx.x"):
            for tx in T.thread_binding(ROWS, thread="threadIdx.x"):
                e = bx * ROWS + tx
                g = e // ff * 2 * ff + e % ff
                if e < m * ff:
                    act[e] = gu[g] / (T.float32(1) + T.exp(-gu[g])) * gu[g + ff]
    return f

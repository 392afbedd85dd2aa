/* The elementwise and per-token operators of a Llama block on the CPU, the counterparts of
   compile/kernels/layers.py, reading and writing the same layouts so a command list can run a
   layer on either: activations row-major (m tokens, width); the embedding in the GPU layout of
   compile/kernels/layout.py (row index fastest); the KV cache as attention.c reads it, keys
   transposed (kv_heads, head_dim, ctx) and values (kv_heads, ctx, head_dim). Each op is a small
   share of a decode step next to the matmuls, so only the walks over a whole row are SIMD. */
#include "vmath.h"

/* An f16 (low 16 bits) to f32: the magnitude bits shifted into f32 position read as a float
   2^-112 too small (subnormal for f16 subnormals), which one exact multiply rebiases. Infinities
   and NaNs (never a valid scale or minimum) are not kept. */
static inline float f16_to_f32(uint32_t h) {
    float magnitude = __builtin_bit_cast(float, (h & 0x7fff) << 13) * 0x1p112f;
    return h & 0x8000 ? -magnitude : magnitude;
}

/* x[t, :] = dequantised row ids[t] of the (n, k) embedding, an id outside [0, n) reading row 0.
   dense: codes `bits` wide, 32/bits per u32, w (k/per, n); else bit-planes, w (k/32, bits, n).
   sm (k/group, n) holds each group's scale (low f16) and minimum (high f16). Scalar, element by
   element as the GPU kernel: a row is read once per token. */
EXPORT(cpu_embed) void cpu_embed(const int32_t *ids, const uint32_t *w, const uint32_t *sm, float *x,
                                 int m, int n, int k, int bits, int group, int dense) {
    const int per = 32 / bits;
    const uint32_t mask = (1u << bits) - 1;
    for (int t = 0; t < m; t++, x += k) {
        const int row = ids[t] >= 0 && ids[t] < n ? ids[t] : 0;
        for (int e = 0; e < k; e++) {
            uint32_t code = 0;
            if (dense)
                code = (w[(size_t)(e / per) * n + row] >> (e % per * bits)) & mask;
            else
                for (int j = 0; j < bits; j++)
                    code |= ((w[((size_t)(e / 32) * bits + j) * n + row] >> (e % 32)) & 1) << j;
            const uint32_t pair = sm[(size_t)(e / group) * n + row];
            x[e] = (float)code * f16_to_f32(pair) + f16_to_f32(pair >> 16);
        }
    }
}

/* For each token: x[t] += y[t] if y is not null (every residual add is followed by a norm, so
   one pass does both), then out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight. */
EXPORT(cpu_rms_norm) void cpu_rms_norm(float *x, const float *y, const float *weight, float *out, int m, int d,
                                       float eps) {
    const int full = d & ~3;
    for (int t = 0; t < m; t++, x += d, out += d) {
        const float *yt = y ? y + (size_t)t * d : 0;
        v128_t acc = wasm_f32x4_splat(0);
        for (int i = 0; i < full; i += 4) {
            v128_t v = wasm_v128_load(x + i);
            if (yt) {
                v = wasm_f32x4_add(v, wasm_v128_load(yt + i));
                wasm_v128_store(x + i, v);
            }
            acc = wasm_f32x4_add(acc, wasm_f32x4_mul(v, v));
        }
        float ss = hsum(acc);
        for (int i = full; i < d; i++) {
            if (yt)
                x[i] += yt[i];
            ss += x[i] * x[i];
        }
        const float r = 1.0f / __builtin_sqrtf(ss / (float)d + eps);
        const v128_t rv = wasm_f32x4_splat(r);
        for (int i = 0; i < full; i += 4)
            wasm_v128_store(out + i, wasm_f32x4_mul(wasm_f32x4_mul(wasm_v128_load(x + i), rv), wasm_v128_load(weight + i)));
        for (int i = full; i < d; i++)
            out[i] = x[i] * r * weight[i];
    }
}

/* silu(g) u = g / (1 + e^-g) u per lane; e^-g = inf for g << 0 gives -0, not NaN. */
static inline v128_t swiglu4(v128_t g, v128_t u) {
    v128_t denom = wasm_f32x4_add(wasm_f32x4_splat(1.0f), exp4(wasm_f32x4_neg(g)));
    return wasm_f32x4_mul(wasm_f32x4_div(g, denom), u);
}

/* act[t, i] = silu(gu[t, i]) gu[t, ff + i]: gate and up are the two halves of a fused row. */
EXPORT(cpu_swiglu) void cpu_swiglu(const float *gu, float *act, int m, int ff) {
    const int full = ff & ~3;
    for (int t = 0; t < m; t++, gu += 2 * (size_t)ff, act += ff) {
        for (int i = 0; i < full; i += 4)
            wasm_v128_store(act + i, swiglu4(wasm_v128_load(gu + i), wasm_v128_load(gu + ff + i)));
        if (full < ff) {  /* the tail through the same lanes, padded with zeros */
            float g[4] = {0}, u[4] = {0}, a[4];
            for (int i = full; i < ff; i++)
                g[i - full] = gu[i], u[i - full] = gu[ff + i];
            wasm_v128_store(a, swiglu4(wasm_v128_load(g), wasm_v128_load(u)));
            for (int i = full; i < ff; i++)
                act[i] = a[i - full];
        }
    }
}

/* Rotary embedding of m tokens' queries and keys at positions pos.., and their keys and values
   stored in the cache. Token t's row qkv[t*stride:] holds q (heads), k and v (kv_heads each) of
   head_dim; pairs (2i, 2i+1), i < n_rot/2, of each q and k head turn by the angle of pos + t
   from cs (ctx, n_rot/2, 2) = (cos, sin), in place. Keys go to kc (kv_heads, head_dim, ctx),
   transposed so attention's score walk reads consecutive positions; values to vc (kv_heads, ctx,
   head_dim). Tokens at or past ctx are left out. */
EXPORT(cpu_rope_append) void cpu_rope_append(float *qkv, const float *cs, float *kc, float *vc, int m, int pos,
                                             int ctx, int heads, int kv_heads, int head_dim, int n_rot, int stride) {
    const int pairs = n_rot / 2;
    for (int t = 0; t < m && pos + t < ctx; t++) {
        const int p = pos + t;
        float *row = qkv + (size_t)t * stride;
        const float *c = cs + (size_t)p * pairs * 2;
        for (int h = 0; h < heads + kv_heads; h++) {
            float *a = row + (size_t)h * head_dim;
            for (int i = 0; i < pairs; i++) {
                const float a0 = a[2 * i], a1 = a[2 * i + 1], cos = c[2 * i], sin = c[2 * i + 1];
                a[2 * i] = a0 * cos - a1 * sin;
                a[2 * i + 1] = a0 * sin + a1 * cos;
            }
        }
        for (int h = 0; h < kv_heads; h++) {
            const float *k = row + (size_t)(heads + h) * head_dim, *v = k + (size_t)kv_heads * head_dim;
            for (int d = 0; d < head_dim; d++) {
                kc[((size_t)h * head_dim + d) * ctx + p] = k[d];
                vc[((size_t)h * ctx + p) * head_dim + d] = v[d];
            }
        }
    }
}

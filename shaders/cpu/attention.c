/* Causal grouped-query attention on the CPU over the KV cache that cpu_rope_append (layers.c)
   fills: keys transposed (kv_heads, head_dim, ctx), values (kv_heads, ctx, head_dim). Decode
   (one token) is a walk over a layer's whole cache, so both walks are SIMD over the cache's
   contiguous axis: the scores of a query head over positions read consecutive positions of
   each key dimension's row; the output reads consecutive dimensions of each position's value.
   The query heads sharing a kv head (heads / kv_heads of them) are done together, up to 4, so
   each cache vector loaded serves all of them; their scores live in one static scratch. */
#include "vmath.h"

/* Score slots: a head's scores over a whole context. The host refuses larger contexts. */
#define MAX_CTX 32768
#define MAX_GROUP 4  /* query heads per pass: 4 x 2 score and output accumulators in registers */

static float scratch[MAX_CTX];

EXPORT(cpu_attention_max_ctx) int cpu_attention_max_ctx(void) { return MAX_CTX; }

/* s[j*row + p] = (q_j . k[:, p]) * scale for nh heads q_j = q + j*head_dim and positions p < len:
   eight positions at a time (two vectors per head), then the rest one by one (each lane adds its
   products in dimension order, as the scalar loop does). `nh` is a constant in each caller. */
static inline __attribute__((always_inline)) void scores(const float *q, const float *k, float *s, int row,
                                                         int len, int ctx, int head_dim, float scale, const int nh) {
    const v128_t sv = wasm_f32x4_splat(scale);
    int p = 0;
    for (; p + 8 <= len; p += 8) {
        v128_t acc[MAX_GROUP][2];
        for (int j = 0; j < nh; j++)
            acc[j][0] = acc[j][1] = wasm_f32x4_splat(0);
        for (int d = 0; d < head_dim; d++) {
            const float *kd = k + (size_t)d * ctx + p;
            const v128_t k0 = wasm_v128_load(kd), k1 = wasm_v128_load(kd + 4);
            for (int j = 0; j < nh; j++) {
                const v128_t qd = wasm_v128_load32_splat(q + j * head_dim + d);
                acc[j][0] = wasm_f32x4_add(acc[j][0], wasm_f32x4_mul(qd, k0));
                acc[j][1] = wasm_f32x4_add(acc[j][1], wasm_f32x4_mul(qd, k1));
            }
        }
        for (int j = 0; j < nh; j++) {
            wasm_v128_store(s + j * row + p, wasm_f32x4_mul(acc[j][0], sv));
            wasm_v128_store(s + j * row + p + 4, wasm_f32x4_mul(acc[j][1], sv));
        }
    }
    for (; p < len; p++)
        for (int j = 0; j < nh; j++) {
            float a = 0;
            for (int d = 0; d < head_dim; d++)
                a += q[j * head_dim + d] * k[(size_t)d * ctx + p];
            s[j * row + p] = a * scale;
        }
}

/* out_j[d0 : d0 + 4*nv] = sum_p s_j[p] v[p][d0 :] / sum_j for nh heads: the accumulators stay in
   registers over all positions. `nh` and `nv` (1 or 2 vectors) are constants in each caller. */
static inline __attribute__((always_inline)) void weigh(const float *s, int row, const float *v, float *out,
                                                        const float *sum, int len, int head_dim, int d0,
                                                        const int nh, const int nv) {
    v128_t acc[MAX_GROUP][2];
    for (int j = 0; j < nh; j++)
        acc[j][0] = acc[j][1] = wasm_f32x4_splat(0);
    for (int p = 0; p < len; p++) {
        const float *vp = v + (size_t)p * head_dim + d0;
        v128_t vv[2];
        for (int i = 0; i < nv; i++)
            vv[i] = wasm_v128_load(vp + 4 * i);
        for (int j = 0; j < nh; j++) {
            const v128_t w = wasm_v128_load32_splat(s + j * row + p);
            for (int i = 0; i < nv; i++)
                acc[j][i] = wasm_f32x4_add(acc[j][i], wasm_f32x4_mul(w, vv[i]));
        }
    }
    for (int j = 0; j < nh; j++)
        for (int i = 0; i < nv; i++)
            wasm_v128_store(out + j * head_dim + d0 + 4 * i, wasm_f32x4_div(acc[j][i], wasm_f32x4_splat(sum[j])));
}

/* Softmax over a head's scores in place, unnormalised (e^(s - max)); returns the sum. The row is
   padded to a multiple of 4 with -inf, whose e^ is 0. */
static float softmax(float *s, int len) {
    for (int p = len; p & 3; p++)
        s[p] = -__builtin_inff();
    const int padded = (len + 3) & ~3;
    v128_t top = wasm_f32x4_splat(-__builtin_inff());
    for (int p = 0; p < padded; p += 4)
        top = wasm_f32x4_pmax(top, wasm_v128_load(s + p));
    const v128_t mx = wasm_f32x4_splat(hmax(top));
    v128_t sum = wasm_f32x4_splat(0);
    for (int p = 0; p < padded; p += 4) {
        const v128_t e = exp4(wasm_f32x4_sub(wasm_v128_load(s + p), mx));
        wasm_v128_store(s + p, e);
        sum = wasm_f32x4_add(sum, e);
    }
    return hsum(sum);
}

/* Attention of nh query heads (consecutive, from q) over one kv head's cache, positions < len. */
static inline __attribute__((always_inline)) void heads_pass(const float *q, const float *k, const float *v,
                                                             float *out, int len, int ctx, int head_dim,
                                                             const int nh) {
    const int row = (len + 3) & ~3;
    float sum[MAX_GROUP];
    scores(q, k, scratch, row, len, ctx, head_dim, 1.0f / __builtin_sqrtf((float)head_dim), nh);
    for (int j = 0; j < nh; j++)
        sum[j] = softmax(scratch + j * row, len);
    int d = 0;
    for (; d + 8 <= head_dim; d += 8)
        weigh(scratch, row, v, out, sum, len, head_dim, d, nh, 2);
    for (; d < head_dim; d += 4)
        weigh(scratch, row, v, out, sum, len, head_dim, d, nh, 1);
}

/* out[t, h] = softmax(q[t, h] . k[0 : pos+t+1] / sqrt(head_dim)) v[0 : pos+t+1] for m tokens at
   positions pos.. and query heads h, whose kv head is h / (heads / kv_heads); query t, head h at
   q[t*q_stride + h*head_dim], out (m, heads, head_dim). head_dim a multiple of 4, ctx at most
   MAX_CTX (else nothing is written); tokens at or past ctx are left out, as rope_append leaves
   them out of the cache. */
EXPORT(cpu_attention) void cpu_attention(const float *q, const float *kc, const float *vc, float *out, int m,
                                         int pos, int ctx, int heads, int kv_heads, int head_dim, int q_stride) {
    if (ctx > MAX_CTX)
        return;
    const int group = heads / kv_heads;
    for (int t = 0; t < m && pos + t < ctx; t++) {
        const int len = pos + t + 1, row = (len + 3) & ~3;
        const int most = MAX_CTX / row < MAX_GROUP ? MAX_CTX / row : MAX_GROUP;  /* heads the scratch holds */
        for (int hk = 0; hk < kv_heads; hk++) {
            const float *k = kc + (size_t)hk * head_dim * ctx, *v = vc + (size_t)hk * ctx * head_dim;
            for (int j = 0; j < group;) {
                const int h = hk * group + j, nh = group - j < most ? group - j : most;
                const float *qh = q + (size_t)t * q_stride + (size_t)h * head_dim;
                float *oh = out + ((size_t)t * heads + h) * head_dim;
                switch (nh) {
                case 1: heads_pass(qh, k, v, oh, len, ctx, head_dim, 1); break;
                case 2: heads_pass(qh, k, v, oh, len, ctx, head_dim, 2); break;
                case 3: heads_pass(qh, k, v, oh, len, ctx, head_dim, 3); break;
                default: heads_pass(qh, k, v, oh, len, ctx, head_dim, 4); break;
                }
                j += nh;
            }
        }
    }
}

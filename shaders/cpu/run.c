/* The CPU backend's command list: a plan's steps as records the host prepares once, run in one
   call, so a decode step crosses from Python (or JavaScript) into the module once, not ~420 times.

   A record is u32 words: the op code, the count of words that follow, then the op's parameters
   (from the package's kernel `cpu` entry), its buffers' offsets in this memory (in the order of
   OPS in runtime_py/cpu.py) and its uniform values (i32, u32 or f32 bits). `run_words(op)` tells
   the host how many words each op takes, which runtime_py's tests hold against its table. */
#include "lut.h" /* the tables' layout */

void cpu_embed(const int32_t *ids, const uint32_t *w, const uint32_t *sm, float *x, int m, int n, int k, int bits,
               int group, int dense);
void cpu_rms_norm(float *x, const float *y, const float *weight, float *out, int m, int d, float eps);
void cpu_rope_append(float *qkv, const float *cs, float *kc, float *vc, int m, int pos, int ctx, int heads,
                     int kv_heads, int head_dim, int n_rot, int stride);
void cpu_attention(const float *q, const float *kc, const float *vc, float *out, int m, int pos, int ctx, int heads,
                   int kv_heads, int head_dim, int q_stride);
void cpu_swiglu(const float *gu, float *act, int m, int ff);
int lut_table(const float *x, int k, int span, int8_t *table, float *tscale, float *xsum);
int lut_gemv(const uint8_t *w, int n, int k, int bits, int group, int scale_bits, int span, const int8_t *table,
             const float *tscale, const float *xsum, float *y);
int planes_gemm(const uint8_t *w, int n, int k, int bits, int group, int scale_bits, const float *x, int m, float *y,
                int ldy, uint8_t *scratch);
int dense_gemv(const uint8_t *w, int n, int k, int bits, int group, const float *x, float *y);
int dense_gemm(const uint8_t *w, int n, int k, int bits, int group, const float *x, int m, float *y, int ldy,
               uint8_t *scratch);
void cpu_penalize(float *logits, const int32_t *seen, const int32_t *ids, int n, int count, float penalty);
void cpu_argmax(const float *logits, int32_t *out, int n);
void cpu_sample(const float *logits, float *probs, int32_t *out, int n, float temperature, int top_k, float top_p,
                uint32_t seed, uint32_t step);
void cpu_nll(const float *logits, const int32_t *targets, float *out, int m, int n);
void gemv_f32(const float *w, int n, int k, const float *x, float *y);

enum { EMBED, RMS_NORM, ROPE_APPEND, ATTENTION, ATTENTION_SPLIT, ATTENTION_MERGE, SWIGLU, LUT_TABLE, LUT_GEMV, GEMM,
       DENSE_GEMV, PENALIZE, ARGMAX, SAMPLE, NLL, GEMV_F32, OPS };

/* Words after the count: parameters + buffers + uniforms. */
static const uint8_t WORDS[OPS] = {
    [EMBED] = 4 + 4 + 2, [RMS_NORM] = 2 + 4 + 2, [ROPE_APPEND] = 5 + 4 + 3, [ATTENTION] = 4 + 4 + 3,
    [ATTENTION_SPLIT] = 4 + 4 + 2, [ATTENTION_MERGE] = 2 + 2, [SWIGLU] = 1 + 2 + 1, [LUT_TABLE] = 2 + 2 + 1,
    [LUT_GEMV] = 5 + 3 + 2, [GEMM] = 7 + 4 + 4, [DENSE_GEMV] = 3 + 4 + 3, [PENALIZE] = 3 + 3, [ARGMAX] = 2 + 1,
    [SAMPLE] = 3 + 6, [NLL] = 3 + 2, [GEMV_F32] = 1 + 3 + 1,
};

EXPORT(run_words) int run_words(int op) { return op >= 0 && op < OPS ? WORDS[op] : -1; }

static inline float f32(uint32_t bits) {
    union { uint32_t u; float f; } v = {bits};
    return v.f;
}

#define I(i) ((int)a[i])
#define P(type, i) ((type *)(uintptr_t)a[i])
#define F(i) f32(a[i])

/* One record; nonzero when its op refuses the shape (the LUT and dense matmuls check theirs). */
static int step(uint32_t op, const uint32_t *a) {
    switch (op) {
    case EMBED:  /* k bits group dense | ids w sm x | m n */
        cpu_embed(P(int32_t, 4), P(uint32_t, 5), P(uint32_t, 6), P(float, 7), I(8), I(9), I(0), I(1), I(2), I(3));
        return 0;
    case RMS_NORM:  /* d residual | x y weight out | m eps */
        cpu_rms_norm(P(float, 2), I(1) ? P(float, 3) : 0, P(float, 4), P(float, 5), I(6), I(0), F(7));
        return 0;
    case ROPE_APPEND:  /* heads kv_heads head_dim n_rot stride | qkv cs kc vc | m pos ctx */
        cpu_rope_append(P(float, 5), P(float, 6), P(float, 7), P(float, 8), I(9), I(10), I(11), I(0), I(1), I(2),
                        I(3), I(4));
        return 0;
    case ATTENTION:  /* heads kv_heads head_dim q_stride | q kc vc out | m pos ctx */
        cpu_attention(P(float, 4), P(float, 5), P(float, 6), P(float, 7), I(8), I(9), I(10), I(0), I(1), I(2), I(3));
        return 0;
    case ATTENTION_SPLIT:  /* the same for one token, into `part`; the merge copies it to `out` */
        cpu_attention(P(float, 4), P(float, 5), P(float, 6), P(float, 7), 1, I(8), I(9), I(0), I(1), I(2), I(3));
        return 0;
    case ATTENTION_MERGE: {  /* heads head_dim | part out */
        const float *part = P(float, 2);
        float *out = P(float, 3);
        for (int i = 0; i < I(0) * I(1); i++)
            out[i] = part[i];
        return 0;
    }
    case SWIGLU:  /* ff | gu act | m */
        cpu_swiglu(P(float, 1), P(float, 2), I(3), I(0));
        return 0;
    case LUT_TABLE: {  /* k span | x table | x0: the hi and lo tables, then the span scales and sums */
        int8_t *table = P(int8_t, 3);
        float *tscale = (float *)(table + lut_table_scales_at(I(0)));
        return lut_table(P(float, 2) + I(4), I(0), I(1), table, tscale, tscale + I(0) / I(1));
    }
    case LUT_GEMV: {  /* k bits group scale_bits span | w table y | n y0 */
        const int8_t *table = P(int8_t, 6);
        const float *tscale = (const float *)(table + lut_table_scales_at(I(0)));
        return lut_gemv(P(uint8_t, 5), I(8), I(0), I(1), I(2), I(3), I(4), table, tscale, tscale + I(0) / I(4),
                        P(float, 7) + I(9));
    }
    case GEMM:  /* k bits group dense scale_bits span scratch | x w sm y | m n ldy y0: w repacked (sm unused
                   by the dense kernel), the scratch for the LUT's tables or the dense activations */
        if (I(3))
            return dense_gemm(P(uint8_t, 8), I(12), I(0), I(1), I(2), P(float, 7), I(11), P(float, 10) + I(14), I(13),
                              P(uint8_t, 6));
        return planes_gemm(P(uint8_t, 8), I(12), I(0), I(1), I(2), I(4), P(float, 7), I(11), P(float, 10) + I(14),
                           I(13), P(uint8_t, 6));
    case DENSE_GEMV:  /* k bits group | x w sm y | n x0 y0: w repacked (dense_repack), sm unused */
        return dense_gemv(P(uint8_t, 4), I(7), I(0), I(1), I(2), P(float, 3) + I(8), P(float, 6) + I(9));
    case PENALIZE:  /* logits seen ids | n count penalty */
        cpu_penalize(P(float, 0), P(int32_t, 1), P(int32_t, 2), I(3), I(4), F(5));
        return 0;
    case ARGMAX:  /* logits out | n */
        cpu_argmax(P(float, 0), P(int32_t, 1), I(2));
        return 0;
    case SAMPLE:  /* logits probs out | n temperature top_k top_p seed step */
        cpu_sample(P(float, 0), P(float, 1), P(int32_t, 2), I(3), F(4), I(5), F(6), a[7], a[8]);
        return 0;
    case NLL:  /* logits targets out | m n */
        cpu_nll(P(float, 0), P(int32_t, 1), P(float, 2), I(3), I(4));
        return 0;
    case GEMV_F32:  /* k | w x y | n: no plan's op; the fp32 baseline `lutlm bench kernels` measures */
        gemv_f32(P(float, 1), I(4), I(0), P(float, 2), P(float, 3));
        return 0;
    }
    return -1;
}

/* Runs `count` records from `cmd`; 0, or 1 + the index of the first record refused (an unknown op,
   a word count that is not the op's, or a shape its kernel does not take), after which none runs. */
EXPORT(run) int run(const uint32_t *cmd, int count) {
    for (int i = 0; i < count; i++) {
        uint32_t op = cmd[0];
        if (op >= OPS || cmd[1] != WORDS[op] || step(op, cmd + 2))
            return i + 1;
        cmd += 2 + WORDS[op];
    }
    return 0;
}

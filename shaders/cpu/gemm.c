/* The prefill GEMM for bit-plane weights in lut.h's tile layout (the bytes lut_gemv reads):
   Y = W X for m tokens, exact but for the int16 rounding of the activations.

   The LUT GEMV rebuilds its work per token, so over many tokens it cannot reuse a weight; here
   each tile's codes are unpacked once per group and serve every token. The activations go to
   int16 once per call (q16.h: one scale per token and group) with their f32 group sums; a
   group's codes become int16 pairs, and i32x4.dot_i16x8_s does 8 multiply-adds at a time, exact
   in int32: the centred codes are at most 8 in size, so a group of at most 256 inputs sums to at
   most 8 x 32767 x 256 < 2^27. Each group's integer sums go to f32 once:
   y += (sum x xscale) x scale + minimum' x xsum.

   The tokens are the vector lanes: a register block is 4 rows x 2 quads of tokens, each row's
   code pair splatted to the 4 lanes once in the unpack (so the hot loop has plain loads, no
   splats) and each quad's activations interleaved in pairs once per call. 8 accumulators, 2
   activation vectors, a code vector and a product fit x64's 16 vector registers; 4 rows x 3 quads
   spilled and was slower, as were 2 x 4, 8 x 1 and unrolling by two pairs (wasmtime 50, x64).

   No relaxed instruction: the relaxed integer dots take int8 activations (too coarse, q16.h;
   splitting int16 into two int8 halves costs more than the int16 dot), and relaxed_madd may or
   may not round its product. */
#include "f16.h"
#include "lut.h"
#include "q16.h"

#define ROWS 4  /* rows per register block */
#define QUADS 2 /* quads of tokens per register block */

static int gemm_group_supported(int k, int group) {
    return k > 0 && k <= MAX_DIM && k % 32 == 0 && (group == 16 || (group % 32 == 0 && group <= MAX_GROUP)) &&
           k % group == 0;
}

/* The scratch for m tokens padded to m4 (a multiple of 4; the padding tokens are zeros, computed
   and never stored), in this order: the int16 activations, for group g and quad Q of tokens at
   (g m4/4 + Q) 4G, pair u of the group's inputs at 8u as (t0 2u, t0 2u + 1, t1 2u, ...); each
   token and group's scale, then its sum, at g m4 + t; one tile's f32 outputs, row r's tokens at
   r m4; one group of a tile's codes unpacked, pair u of row r at 8 (16u + r). Every part starts
   16-byte aligned: m4 is a multiple of 4 and k of 32. */
struct scratch {
    int16_t *x16;
    float *xscale, *xsum, *ytile;
    int16_t *codes;
};

static inline int pad4(int m) { return (m + 3) & ~3; }

static uint64_t scratch_parts(int m, int k, int group, uint8_t *base, struct scratch *s) {
    uint64_t m4 = (uint64_t)pad4(m), sums = 4 * m4 * (uint64_t)(k / group);
    uint64_t xscale = 2 * m4 * (uint64_t)k, ytile = xscale + 2 * sums, codes = ytile + 4 * TILE * m4;
    if (s)
        *s = (struct scratch){(int16_t *)base, (float *)(base + xscale), (float *)(base + xscale + sums),
                              (float *)(base + ytile), (int16_t *)(base + codes)};
    return codes + (uint64_t)8 * TILE * group;
}

/* Bytes of planes_gemm's scratch for m tokens of k inputs in groups of `group`, or 0 when the
   shape is not supported or would not fit in half of wasm32's address space. */
EXPORT(planes_gemm_scratch) size_t planes_gemm_scratch(int m, int k, int group) {
    if (m < 1 || !gemm_group_supported(k, group))
        return 0;
    uint64_t bytes = scratch_parts(m, k, group, 0, 0);
    return bytes > 0x7fffffff ? 0 : (size_t)bytes;
}

/* The codes' centre, subtracted in the integer dot and added back through the minimum:
   W = (code - c) x scale + (minimum + c x scale). The int16 rounding error of x is multiplied by
   the code, so centred codes (4 bits: -7..8, ternary: -1..1) halve it or better. */
static inline int centre(int bits) { return ((1 << bits) - 1) / 2; }

/* One group of a tile's codes (G/8 x b x 16 bytes, lut.h) as centred int16 in the scratch's
   order: each row's pair of inputs (2u, 2u + 1) splatted to 4 lanes, which dot_i16x8 pairs with a
   quad of tokens' activations. Bit i of a byte is input i of its 8; a 16-bit shift moves it to bit
   j (plane j's weight) of the same byte, as i and j are both inside the byte, and the mask drops
   the rest. `bits` is a constant in each instance. */
static inline __attribute__((always_inline)) void unpack(const uint8_t *w, const int bits, int group,
                                                         int16_t *codes) {
    const v128_t mid = wasm_i16x8_splat((int16_t)centre(bits));
    for (int p = 0; p < group / 8; p++, w += TILE * bits, codes += 4 * TILE * 8) {
        v128_t plane[4], c[8];
        for (int j = 0; j < bits; j++)
            plane[j] = wasm_v128_load(w + TILE * j);
        for (int i = 0; i < 8; i++) {
            c[i] = wasm_i8x16_splat(0);
            for (int j = 0; j < bits; j++) {
                v128_t v = i >= j ? wasm_u16x8_shr(plane[j], i - j) : wasm_i16x8_shl(plane[j], j - i);
                c[i] = wasm_v128_or(c[i], wasm_v128_and(v, wasm_i8x16_splat(1 << j)));
            }
        }
        for (int u = 0; u < 4; u++) {
            v128_t a = c[2 * u], b = c[2 * u + 1];
            v128_t lo = wasm_i8x16_shuffle(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
            v128_t hi = wasm_i8x16_shuffle(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
            v128_t pairs[4] = {wasm_u16x8_extend_low_u8x16(lo), wasm_u16x8_extend_high_u8x16(lo),
                               wasm_u16x8_extend_low_u8x16(hi), wasm_u16x8_extend_high_u8x16(hi)};
            int16_t *out = codes + TILE * 8 * u;
            for (int q = 0; q < 4; q++, out += 4 * 8) {
                v128_t v = wasm_i16x8_sub(pairs[q], mid); /* rows 4q .. 4q + 3, one u32 lane each */
                wasm_v128_store(out, wasm_i32x4_shuffle(v, v, 0, 0, 0, 0));
                wasm_v128_store(out + 8, wasm_i32x4_shuffle(v, v, 1, 1, 1, 1));
                wasm_v128_store(out + 16, wasm_i32x4_shuffle(v, v, 2, 2, 2, 2));
                wasm_v128_store(out + 24, wasm_i32x4_shuffle(v, v, 3, 3, 3, 3));
            }
        }
    }
}

typedef void unpack_fn(const uint8_t *w, int group, int16_t *codes);
#define UNPACK_FN(b) \
    static void unpack_##b(const uint8_t *w, int group, int16_t *codes) { unpack(w, b, group, codes); }
UNPACK_FN(2)
UNPACK_FN(3)
UNPACK_FN(4)
static unpack_fn *const UNPACK[3] = {unpack_2, unpack_3, unpack_4};

/* ROWS rows x TQ quads of tokens of one group: `codes` the rows' unpacked pairs, `x` the first
   quad's activations (the next `stride` int16 on); then into the tile's outputs (row r's tokens
   `m4` apart): y += (sum x xscale) x scale + minimum' x xsum, `sc` and `mn` the rows' scale and
   minimum'. TQ is a constant in each caller. */
static inline __attribute__((always_inline)) void block(const int16_t *codes, const int16_t *x, int group, int stride,
                                                        const int TQ, const float *xscale, const float *xsum,
                                                        const float *sc, const float *mn, float *ytile, int m4) {
    v128_t acc[ROWS][QUADS];
    for (int r = 0; r < ROWS; r++)
        for (int t = 0; t < TQ; t++)
            acc[r][t] = wasm_i32x4_splat(0);
    for (int u = 0; u < group / 2; u++, codes += TILE * 8, x += 8) {
        v128_t xv[QUADS];
        for (int t = 0; t < TQ; t++)
            xv[t] = wasm_v128_load(x + t * stride);
        for (int r = 0; r < ROWS; r++) {
            v128_t c = wasm_v128_load(codes + 8 * r);
            for (int t = 0; t < TQ; t++)
                acc[r][t] = wasm_i32x4_add(acc[r][t], wasm_i32x4_dot_i16x8(c, xv[t]));
        }
    }
    for (int t = 0; t < TQ; t++) {
        v128_t xs = wasm_v128_load(xscale + 4 * t), xm = wasm_v128_load(xsum + 4 * t);
        for (int r = 0; r < ROWS; r++) {
            float *out = ytile + r * m4 + 4 * t;
            v128_t part = wasm_f32x4_add(
                wasm_f32x4_mul(wasm_f32x4_mul(wasm_f32x4_convert_i32x4(acc[r][t]), xs), wasm_f32x4_splat(sc[r])),
                wasm_f32x4_mul(wasm_f32x4_splat(mn[r]), xm));
            wasm_v128_store(out, wasm_f32x4_add(wasm_v128_load(out), part));
        }
    }
}

static void block_full(const int16_t *codes, const int16_t *x, int group, int stride, const float *xscale,
                       const float *xsum, const float *sc, const float *mn, float *ytile, int m4) {
    block(codes, x, group, stride, QUADS, xscale, xsum, sc, mn, ytile, m4);
}

static void block_one(const int16_t *codes, const int16_t *x, int group, int stride, const float *xscale,
                      const float *xsum, const float *sc, const float *mn, float *ytile, int m4) {
    block(codes, x, group, stride, 1, xscale, xsum, sc, mn, ytile, m4);
}

/* The activations into the scratch (struct scratch's order): each token and group quantised
   (q16.h), its pairs spread to its lane of the quad; the padding tokens zero. */
static void activations(const float *x, int m, int k, int group, const struct scratch *s) {
    int m4 = pad4(m);
    int16_t q[MAX_GROUP];
    for (int g = 0; g < k / group; g++)
        for (int t = 0; t < m4; t++) {
            size_t at = (size_t)g * m4 + t;
            uint32_t *dst = (uint32_t *)(s->x16 + ((size_t)g * m4 + (size_t)(t & ~3)) * group) + t % 4;
            if (t < m) {
                s->xscale[at] = quantize_group_i16(x + (size_t)t * k + (size_t)g * group, group, q, s->xsum + at);
            } else {
                s->xscale[at] = s->xsum[at] = 0;
                __builtin_memset(q, 0, 2 * (size_t)group);
            }
            for (int u = 0; u < group / 2; u++)
                dst[4 * u] = (uint32_t)(uint16_t)q[2 * u] | (uint32_t)(uint16_t)q[2 * u + 1] << 16;
        }
}

/* y[t * ldy + r] = sum_i W[r, i] x[t k + i] for the m tokens, W = code x scale + minimum per group
   (lut.h's tile layout, lut_repack); `scratch` holds planes_gemm_scratch(m, k, group) bytes.
   Rows of y past n are left alone. Returns -1 for an unsupported shape or format, no tokens, or
   ldy < n. */
EXPORT(planes_gemm) int planes_gemm(const uint8_t *w, int n, int k, int bits, int group, int scale_bits,
                                    const float *x, int m, float *y, int ldy, uint8_t *scratch) {
    if (!lut_supported(n, k, bits, group, scale_bits) || !planes_gemm_scratch(m, k, group) || ldy < n)
        return -1;
    struct scratch s;
    scratch_parts(m, k, group, scratch, &s);
    activations(x, m, k, group, &s);
    int m4 = pad4(m), quads = m4 / 4;
    unpack_fn *unpack_group = UNPACK[bits - 2];
    const int d8 = scale_bits == 8;
    for (int r0 = 0; r0 < n; r0 += TILE) {
        v128_t step_s[4], step_m[4];
        if (d8)
            tile_steps(&w, step_s, step_m);
        __builtin_memset(s.ytile, 0, (size_t)4 * TILE * m4);
        for (int g = 0; g < k / group; g++) {
            unpack_group(w, group, s.codes);
            w += (size_t)group / 8 * bits * TILE;
            v128_t scale[4], minimum[4];
            group_scales(&w, d8, step_s, step_m, scale, minimum);
            float sc[TILE], mn[TILE];
            const v128_t c = wasm_f32x4_splat((float)centre(bits));
            for (int q = 0; q < 4; q++) {
                wasm_v128_store(sc + 4 * q, scale[q]);
                wasm_v128_store(mn + 4 * q, wasm_f32x4_add(minimum[q], wasm_f32x4_mul(scale[q], c)));
            }
            const int16_t *xg = s.x16 + (size_t)g * m4 * group;
            const float *xs = s.xscale + (size_t)g * m4, *xm = s.xsum + (size_t)g * m4;
            for (int r = 0; r < TILE; r += ROWS) {
                int qd = 0;
                for (; qd + QUADS <= quads; qd += QUADS)
                    block_full(s.codes + 8 * r, xg + (size_t)qd * 4 * group, group, 4 * group, xs + 4 * qd,
                               xm + 4 * qd, sc + r, mn + r, s.ytile + (size_t)r * m4 + 4 * qd, m4);
                for (; qd < quads; qd++)
                    block_one(s.codes + 8 * r, xg + (size_t)qd * 4 * group, group, 4 * group, xs + 4 * qd,
                              xm + 4 * qd, sc + r, mn + r, s.ytile + (size_t)r * m4 + 4 * qd, m4);
            }
        }
        for (int t = 0; t < m; t++)
            for (int r = 0; r < TILE && r0 + r < n; r++)
                y[(size_t)t * ldy + r0 + r] = s.ytile[(size_t)r * m4 + t];
    }
    return 0;
}

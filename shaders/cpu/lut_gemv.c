/* T-MAC's LUT GEMV for bit-plane weights, y = W x, in T-MAC's CPU design (docs/kernels.md, "CPU
   kernels"): tables per 4 activations with one table scale per span of inputs (lut.h), each entry
   held as two int8s, hi + lo / 254 table steps (one int8 alone is 0.5-1.2% off per GEMV on real
   LLM activations, enough to change greedy tokens; the pair is float-like), table lookups by i8x16
   swizzle, 16-bit sums of hi and of lo over each span, combined as 254 hi + lo in 32 bits and
   times the table scale / 254 into a float group sum, then the group's scale applied and its
   minimum times the group's activation sum added. The weights are in lut.h's tile layout.

   A weight w = q * scale + minimum with q = sum_j 2^j b_j, so the dot of a row's group with x is
   scale * sum_j 2^j sum_c T_c[b_j of chunk c] + minimum * sum(x over the group), where T_c[m] is
   the sum of chunk c's activations selected by the 4 bits of m. */
#include "f16.h"
#include "lut.h"
#include "vmath.h" /* hmax, hsum */

/* The 16 subset sums of one chunk xc[0..3] as 4 f32x4 (entry m = 4q + lane in vector q), each
   summed in input order, ((s0 + s1) + s2) + s3 with s_i = bit i of m ? xc[i] : 0, which the numpy
   model repeats exactly. */
static inline void subset_sums(const float *xc, v128_t e[4]) {
    const v128_t bit0 = wasm_i32x4_make(0, -1, 0, -1), bit1 = wasm_i32x4_make(0, 0, -1, -1);
    v128_t low = wasm_f32x4_add(wasm_v128_and(wasm_f32x4_splat(xc[0]), bit0),
                                wasm_v128_and(wasm_f32x4_splat(xc[1]), bit1));
    v128_t zero = wasm_f32x4_splat(0), x2 = wasm_f32x4_splat(xc[2]), x3 = wasm_f32x4_splat(xc[3]);
    for (int q = 0; q < 4; q++)
        e[q] = wasm_f32x4_add(wasm_f32x4_add(low, q & 1 ? x2 : zero), q & 2 ? x3 : zero);
}

/* The tables of x (k inputs): for each chunk of 4 activations its 16 subset sums e, each scaled
   to v = e x 127 / `top` (`top` the largest |entry| of the chunk's span, so the span's `tscale` =
   top / 127) and held as hi = v rounded to nearest even and lo = (v - hi) x 254 rounded so (v - hi
   is exact, |lo| <= 127); `table` gets all hi entries, then all lo entries (lut.h); `xsum` each
   span's activation sum. Returns -1 for an unsupported shape. */
EXPORT(lut_table) int lut_table(const float *x, int k, int span, int8_t *table, float *tscale, float *xsum) {
    if (!span_supported(k, span))
        return -1;
    int8_t *lo_table = table + lut_table_lo_at(k);
    for (int s = 0; s < k / span; s++, x += span) {
        v128_t top = wasm_f32x4_splat(0), sum = wasm_f32x4_splat(0), e[4];
        for (int c = 0; c < span / 4; c++) {
            subset_sums(x + 4 * c, e);
            for (int q = 0; q < 4; q++)
                top = wasm_f32x4_pmax(top, wasm_f32x4_abs(e[q]));
            sum = wasm_f32x4_add(sum, wasm_v128_load(x + 4 * c));
        }
        float t = hmax(top);
        v128_t inv = wasm_f32x4_splat(t > 0 ? 127.0f / t : 0.0f), fine = wasm_f32x4_splat(254);
        for (int c = 0; c < span / 4; c++, table += 16, lo_table += 16) {
            subset_sums(x + 4 * c, e);
            v128_t hi[4], lo[4];
            for (int i = 0; i < 4; i++) {
                v128_t v = wasm_f32x4_mul(e[i], inv), h = wasm_f32x4_nearest(v);
                hi[i] = wasm_i32x4_trunc_sat_f32x4(h);
                lo[i] = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(wasm_f32x4_mul(wasm_f32x4_sub(v, h), fine)));
            }
            wasm_v128_store(table, wasm_i8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(hi[0], hi[1]),
                                                           wasm_i16x8_narrow_i32x4(hi[2], hi[3])));
            wasm_v128_store(lo_table, wasm_i8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(lo[0], lo[1]),
                                                              wasm_i16x8_narrow_i32x4(lo[2], lo[3])));
        }
        tscale[s] = t / 127.0f;
        xsum[s] = hsum(sum);
    }
    return 0;
}

/* Row r's hi (or lo) entries of a byte's two chunks, a and b, added into 16-bit sums of rows 0-7
   and 8-15: interleaved byte-wise and added pairwise, fewer instructions than widening each. */
static inline void add_pairs(v128_t sum[2], v128_t a, v128_t b) {
    v128_t ab_lo = wasm_i8x16_shuffle(a, b, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    v128_t ab_hi = wasm_i8x16_shuffle(a, b, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    sum[0] = wasm_i16x8_add(sum[0], wasm_i16x8_extadd_pairwise_i8x16(ab_lo));
    sum[1] = wasm_i16x8_add(sum[1], wasm_i16x8_extadd_pairwise_i8x16(ab_hi));
}

/* One tile of 16 rows: out[r] = row r's dot with the input. `bits`, `d8` (8-bit scales) and
   `span` are constants in each instance (tile_fn), so the plane and chunk loops unroll and the
   scale format is chosen at compile time. Per span the planes go one at a time (few live
   registers), each looking up hi and lo with the same indices; a plane's 16-bit sum over a span
   of at most 32 inputs is at most 8 chunks x 127 = 1016, the planes combined (times 2^j) at most
   15 x 1016 = 15240 (4 bits): inside int16, for hi and lo alike. One dot with (254, 1) pairs then
   gives 254 hi + lo per row in 32 bits, below 2^22, so exact in f32. */
static inline __attribute__((always_inline)) void tile(const uint8_t *w, int k, const int bits, int group,
                                                       const int d8, const int span, const int8_t *table,
                                                       const float *tscale, const float *xsum, float *out) {
    const v128_t low = wasm_i8x16_splat(0x0f), fine = wasm_i32x4_splat(254 | 1 << 16), zero = wasm_i16x8_splat(0);
    const size_t lo = lut_table_lo_at(k);
    v128_t y[4] = {wasm_f32x4_splat(0), wasm_f32x4_splat(0), wasm_f32x4_splat(0), wasm_f32x4_splat(0)};
    v128_t step_s[4], step_m[4];
    if (d8)
        tile_steps(&w, step_s, step_m);
    for (int g = 0; g < k / group; g++) {
        v128_t acc[4] = {wasm_f32x4_splat(0), wasm_f32x4_splat(0), wasm_f32x4_splat(0), wasm_f32x4_splat(0)};
        float xs = 0;
        for (int s = 0; s < group / span; s++, tscale++, xsum++, table += 4 * span, w += span / 8 * bits * TILE) {
            v128_t sum[4];  /* hi rows 0-7, 8-15, lo rows 0-7, 8-15 */
            for (int j = 0; j < bits; j++) {
                v128_t part[4] = {zero, zero, zero, zero};
                for (int p = 0; p < span / 8; p++) {
                    const int8_t *t = table + 32 * p;
                    v128_t v = wasm_v128_load(w + (p * bits + j) * TILE);
                    v128_t ia = wasm_v128_and(v, low), ib = wasm_u8x16_shr(v, 4);
                    add_pairs(part, SWIZZLE(wasm_v128_load(t), ia), SWIZZLE(wasm_v128_load(t + 16), ib));
                    add_pairs(part + 2, SWIZZLE(wasm_v128_load(t + lo), ia), SWIZZLE(wasm_v128_load(t + lo + 16), ib));
                }
                for (int q = 0; q < 4; q++)
                    sum[q] = j ? wasm_i16x8_add(sum[q], wasm_i16x8_shl(part[q], j)) : part[q];
            }
            v128_t ts = wasm_f32x4_splat(*tscale / 254.0f);
            for (int h = 0; h < 2; h++) {
                v128_t r0 = wasm_i32x4_dot_i16x8(wasm_i16x8_shuffle(sum[h], sum[2 + h], 0, 8, 1, 9, 2, 10, 3, 11), fine);
                v128_t r1 = wasm_i32x4_dot_i16x8(wasm_i16x8_shuffle(sum[h], sum[2 + h], 4, 12, 5, 13, 6, 14, 7, 15), fine);
                acc[2 * h] = wasm_f32x4_add(acc[2 * h], wasm_f32x4_mul(wasm_f32x4_convert_i32x4(r0), ts));
                acc[2 * h + 1] = wasm_f32x4_add(acc[2 * h + 1], wasm_f32x4_mul(wasm_f32x4_convert_i32x4(r1), ts));
            }
            xs += *xsum;
        }
        v128_t scale[4], minimum[4];
        group_scales(&w, d8, step_s, step_m, scale, minimum);
        v128_t xsv = wasm_f32x4_splat(xs);  /* y += acc x scale + minimum x the group's xsum */
        for (int q = 0; q < 4; q++)
            y[q] = wasm_f32x4_add(y[q], wasm_f32x4_add(wasm_f32x4_mul(acc[q], scale[q]), wasm_f32x4_mul(minimum[q], xsv)));
    }
    for (int q = 0; q < 4; q++)
        wasm_v128_store(out + 4 * q, y[q]);
}

/* The instances of tile: one per plane count (2-4), scale format and span. */
typedef void tile_fn(const uint8_t *w, int k, int group, const int8_t *table, const float *tscale, const float *xsum,
                     float *out);
#define TILE_FN(b, d8, span)                                                                                    \
    static void tile_##b##_##d8##_##span(const uint8_t *w, int k, int group, const int8_t *table,             \
                                          const float *tscale, const float *xsum, float *out) {                 \
        tile(w, k, b, group, d8, span, table, tscale, xsum, out);                                               \
    }
#define TILE_FNS(b) TILE_FN(b, 0, 16) TILE_FN(b, 0, 32) TILE_FN(b, 1, 16) TILE_FN(b, 1, 32)
TILE_FNS(2)
TILE_FNS(3)
TILE_FNS(4)
#define TILE_ROW(b) {{tile_##b##_0_16, tile_##b##_0_32}, {tile_##b##_1_16, tile_##b##_1_32}}
static tile_fn *const TILES[3][2][2] = {TILE_ROW(2), TILE_ROW(3), TILE_ROW(4)};

/* The tile instance for a weight, or 0 for an unsupported shape, format or span. */
static tile_fn *tile_for(int n, int k, int bits, int group, int scale_bits, int span) {
    if (!lut_supported(n, k, bits, group, scale_bits) || !span_supported(k, span) || group % span)
        return 0;
    return TILES[bits - 2][scale_bits == 8][span == 32];
}

/* The tile's first `rows` outputs (fewer than 16 in the last tile) into y. */
static void store_rows(float *y, const float *out, int rows) {
    for (int r = 0; r < TILE && r < rows; r++)
        y[r] = out[r];
}

/* y (n) = W x from the tables of x (lut_table) and W in the CPU layout (lut_repack). Returns -1
   for an unsupported shape, format or span. */
EXPORT(lut_gemv) int lut_gemv(const uint8_t *w, int n, int k, int bits, int group, int scale_bits, int span,
                              const int8_t *table, const float *tscale, const float *xsum, float *y) {
    tile_fn *fn = tile_for(n, k, bits, group, scale_bits, span);
    if (!fn)
        return -1;
    for (int r0 = 0; r0 < n; r0 += TILE, w += lut_tile_bytes(k, bits, group, scale_bits)) {
        float out[TILE];
        fn(w, k, group, table, tscale, xsum, out);
        store_rows(y + r0, out, n - r0);
    }
    return 0;
}

/* Bytes of one input's tables (lut.h), or 0 for an unsupported shape: the host sizes the table
   buffer by it. */
EXPORT(lut_table_bytes) size_t lut_table_bytes(int k, int span) {
    return span_supported(k, span) ? lut_table_scales_at(k) + (size_t)(k / span) * 8 : 0;
}

/* T-MAC's LUT GEMV for bit-plane weights, y = W x, as CPU-PATH.md measured it: int8 tables per
   4 activations with one table scale per weight group, table lookups by i8x16 swizzle, 16-bit
   accumulation over runs of 32 inputs, then widened, scaled, and the group minimum times the
   group's activation sum added. The weights are in the CPU tile layout of lut.h.

   A weight w = q * scale + minimum with q = sum_j 2^j b_j, so the dot of a row's group with x is
   scale * sum_j 2^j sum_c T_c[b_j of chunk c] + minimum * sum(x over the group), where T_c[m] is
   the sum of chunk c's activations selected by the 4 bits of m. */
#include "lut.h"

/* Run bound: a plane's 16-bit sum over 32 inputs is at most 8 chunks x 127 = 1016, the planes
   combined at most 15 x 1016 = 15240 (4 bits): inside int16. */
#define RUN 32

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

/* One group's tables: for each chunk of 4 activations its 16 subset sums, rounded to nearest even
   int8 after scaling by 127 / `top` (the group's largest |entry|), so `tscale` = top / 127; and
   `xsum` the group's activation sum. Returns -1 for an unsupported shape. */
EXPORT(lut_table) int lut_table(const float *x, int k, int group, int8_t *table, float *tscale, float *xsum) {
    if (!lut_supported(1, k, 2, group))
        return -1;
    for (int g = 0; g < k / group; g++, x += group) {
        v128_t top = wasm_f32x4_splat(0), sum = wasm_f32x4_splat(0), e[4];
        for (int c = 0; c < group / 4; c++) {
            subset_sums(x + 4 * c, e);
            for (int q = 0; q < 4; q++)
                top = wasm_f32x4_pmax(top, wasm_f32x4_abs(e[q]));
            sum = wasm_f32x4_add(sum, wasm_v128_load(x + 4 * c));
        }
        top = wasm_f32x4_pmax(top, wasm_i32x4_shuffle(top, top, 2, 3, 0, 1));
        float t = wasm_f32x4_extract_lane(wasm_f32x4_pmax(top, wasm_i32x4_shuffle(top, top, 1, 0, 3, 2)), 0);
        v128_t inv = wasm_f32x4_splat(t > 0 ? 127.0f / t : 0.0f);
        for (int c = 0; c < group / 4; c++, table += 16) {
            subset_sums(x + 4 * c, e);
            v128_t q[4];
            for (int i = 0; i < 4; i++)
                q[i] = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(wasm_f32x4_mul(e[i], inv)));
            wasm_v128_store(table, wasm_i8x16_narrow_i16x8(wasm_i16x8_narrow_i32x4(q[0], q[1]),
                                                           wasm_i16x8_narrow_i32x4(q[2], q[3])));
        }
        tscale[g] = t / 127.0f;
        xsum[g] = wasm_f32x4_extract_lane(sum, 0) + wasm_f32x4_extract_lane(sum, 1) +
                  wasm_f32x4_extract_lane(sum, 2) + wasm_f32x4_extract_lane(sum, 3);
    }
    return 0;
}

/* Four f16s (the upper halves of u32 lanes) to f32: an arithmetic shift puts exponent and mantissa
   in place and keeps the sign, the mask clears the sign's copies, and one multiply by 2^112
   rebiases the exponent, which also gets subnormals right; infinities and NaNs (never a valid
   scale) are not. */
static inline v128_t f16_to_f32(v128_t high_halves) {
    v128_t bits = wasm_v128_and(wasm_i32x4_shr(high_halves, 3), wasm_i32x4_splat((int32_t)0x8fffffff));
    return wasm_f32x4_mul(bits, wasm_f32x4_splat(0x1p112f));
}

/* y[16 rows] += acc * scale * tscale + minimum * xsum for one tile's group; `sm` its f16s. */
static inline void scale_group(v128_t y[4], const v128_t acc[4], const uint16_t *sm, float tscale, float xsum) {
    const v128_t zero = wasm_i16x8_splat(0), ts = wasm_f32x4_splat(tscale), xs = wasm_f32x4_splat(xsum);
    for (int h = 0; h < 2; h++) {
        v128_t s = wasm_v128_load(sm + 8 * h), m = wasm_v128_load(sm + TILE + 8 * h);
        v128_t sc[2] = {wasm_i16x8_shuffle(zero, s, 0, 8, 0, 9, 0, 10, 0, 11),
                        wasm_i16x8_shuffle(zero, s, 0, 12, 0, 13, 0, 14, 0, 15)};
        v128_t mn[2] = {wasm_i16x8_shuffle(zero, m, 0, 8, 0, 9, 0, 10, 0, 11),
                        wasm_i16x8_shuffle(zero, m, 0, 12, 0, 13, 0, 14, 0, 15)};
        for (int q = 0; q < 2; q++) {
            v128_t term = wasm_f32x4_mul(wasm_f32x4_convert_i32x4(acc[2 * h + q]),
                                         wasm_f32x4_mul(f16_to_f32(sc[q]), ts));
            y[2 * h + q] = wasm_f32x4_add(y[2 * h + q], wasm_f32x4_add(term, wasm_f32x4_mul(f16_to_f32(mn[q]), xs)));
        }
    }
}

/* One tile of 16 rows; `bits` is a constant in each caller so the plane loops unroll. */
static inline __attribute__((always_inline)) void tile(const uint8_t *w, int k, const int bits, int group,
                                                       const int8_t *table, const float *tscale,
                                                       const float *xsum, v128_t y[4]) {
    const v128_t low = wasm_i8x16_splat(0x0f);
    for (int g = 0; g < k / group; g++) {
        v128_t acc[4] = {wasm_i32x4_splat(0), wasm_i32x4_splat(0), wasm_i32x4_splat(0), wasm_i32x4_splat(0)};
        for (int run = 0; run < group / RUN; run++) {
            v128_t lo[4], hi[4];  /* per plane: rows 0-7 and 8-15, 16-bit */
            for (int j = 0; j < bits; j++)
                lo[j] = hi[j] = wasm_i16x8_splat(0);
            for (int p = 0; p < RUN / 8; p++, table += 32) {
                v128_t t0 = wasm_v128_load(table), t1 = wasm_v128_load(table + 16);
                for (int j = 0; j < bits; j++, w += 16) {
                    v128_t v = wasm_v128_load(w);
                    v128_t a = SWIZZLE(t0, wasm_v128_and(v, low)), b = SWIZZLE(t1, wasm_u8x16_shr(v, 4));
                    lo[j] = wasm_i16x8_add(lo[j], wasm_i16x8_add(wasm_i16x8_extend_low_i8x16(a),
                                                                 wasm_i16x8_extend_low_i8x16(b)));
                    hi[j] = wasm_i16x8_add(hi[j], wasm_i16x8_add(wasm_i16x8_extend_high_i8x16(a),
                                                                 wasm_i16x8_extend_high_i8x16(b)));
                }
            }
            for (int j = 1; j < bits; j++) {
                lo[0] = wasm_i16x8_add(lo[0], wasm_i16x8_shl(lo[j], j));
                hi[0] = wasm_i16x8_add(hi[0], wasm_i16x8_shl(hi[j], j));
            }
            acc[0] = wasm_i32x4_add(acc[0], wasm_i32x4_extend_low_i16x8(lo[0]));
            acc[1] = wasm_i32x4_add(acc[1], wasm_i32x4_extend_high_i16x8(lo[0]));
            acc[2] = wasm_i32x4_add(acc[2], wasm_i32x4_extend_low_i16x8(hi[0]));
            acc[3] = wasm_i32x4_add(acc[3], wasm_i32x4_extend_high_i16x8(hi[0]));
        }
        scale_group(y, acc, (const uint16_t *)w, tscale[g], xsum[g]);
        w += 4 * TILE;
    }
}

/* y (n) = W x from the tables of x (lut_table) and W in the CPU layout (lut_repack). Returns -1
   for an unsupported shape. */
EXPORT(lut_gemv) int lut_gemv(const uint8_t *w, int n, int k, int bits, int group, const int8_t *table,
                              const float *tscale, const float *xsum, float *y) {
    if (!lut_supported(n, k, bits, group))
        return -1;
    size_t stride = (size_t)(k / group) * lut_block_bytes(bits, group);
    for (int r0 = 0; r0 < n; r0 += TILE, w += stride) {
        v128_t acc[4] = {wasm_f32x4_splat(0), wasm_f32x4_splat(0), wasm_f32x4_splat(0), wasm_f32x4_splat(0)};
        switch (bits) {
        case 2: tile(w, k, 2, group, table, tscale, xsum, acc); break;
        case 3: tile(w, k, 3, group, table, tscale, xsum, acc); break;
        default: tile(w, k, 4, group, table, tscale, xsum, acc); break;
        }
        float out[TILE];
        for (int q = 0; q < 4; q++)
            wasm_v128_store(out + 4 * q, acc[q]);
        for (int r = 0; r < TILE && r0 + r < n; r++)
            y[r0 + r] = out[r];
    }
    return 0;
}

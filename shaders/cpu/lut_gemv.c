/* T-MAC's LUT GEMV for bit-plane weights, y = W x, in T-MAC's CPU design (docs/kernels.md, "CPU
   kernels"): int8 tables per 4 activations with one table scale per weight group, table lookups
   by i8x16 swizzle, 16-bit accumulation over runs of 32 inputs, then widened, scaled, and the
   group minimum times the group's activation sum added. The weights are in lut.h's tile layout.

   A weight w = q * scale + minimum with q = sum_j 2^j b_j, so the dot of a row's group with x is
   scale * sum_j 2^j sum_c T_c[b_j of chunk c] + minimum * sum(x over the group), where T_c[m] is
   the sum of chunk c's activations selected by the 4 bits of m. */
#include "lut.h"

/* Run bound: a plane's 16-bit sum over 32 inputs is at most 8 chunks x 127 = 1016, the planes
   combined at most 15 x 1016 = 15240 (4 bits): inside int16. Groups of 16 are one shorter run. */
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
    if (!lut_supported(1, k, 2, group, 16))
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

/* 16 f16s to f32, rows 0-3, 4-7, 8-11, 12-15. */
static inline void load_f16(const uint16_t *h, v128_t out[4]) {
    const v128_t zero = wasm_i16x8_splat(0);
    for (int i = 0; i < 2; i++) {
        v128_t v = wasm_v128_load(h + 8 * i);
        out[2 * i] = f16_to_f32(wasm_i16x8_shuffle(zero, v, 0, 8, 0, 9, 0, 10, 0, 11));
        out[2 * i + 1] = f16_to_f32(wasm_i16x8_shuffle(zero, v, 0, 12, 0, 13, 0, 14, 0, 15));
    }
}

/* 16 8-bit codes times their rows' steps. */
static inline void load_codes(const uint8_t *c, const v128_t step[4], v128_t out[4]) {
    v128_t v = wasm_v128_load(c);
    v128_t half[2] = {wasm_u16x8_extend_low_u8x16(v), wasm_u16x8_extend_high_u8x16(v)};
    for (int i = 0; i < 2; i++) {
        out[2 * i] = wasm_f32x4_mul(wasm_f32x4_convert_i32x4(wasm_u32x4_extend_low_u16x8(half[i])), step[2 * i]);
        out[2 * i + 1] = wasm_f32x4_mul(wasm_f32x4_convert_i32x4(wasm_u32x4_extend_high_u16x8(half[i])), step[2 * i + 1]);
    }
}

/* One tile of 16 rows into y; `bits` and `d8` (8-bit scales) are constants in each caller, so
   the plane loops unroll and the scale format is chosen at compile time. */
static inline __attribute__((always_inline)) void tile(const uint8_t *w, int k, const int bits, int group,
                                                       const int d8, const int8_t *table, const float *tscale,
                                                       const float *xsum, v128_t y[4]) {
    const v128_t low = wasm_i8x16_splat(0x0f);
    const int run = group < RUN ? group : RUN;
    v128_t step_s[4], step_m[4];
    if (d8) {
        load_f16((const uint16_t *)w, step_s);
        load_f16((const uint16_t *)w + TILE, step_m);
        for (int q = 0; q < 4; q++)
            step_m[q] = wasm_f32x4_neg(step_m[q]);  /* minimum = -b x step */
        w += lut_tile_header(8);
    }
    for (int g = 0; g < k / group; g++) {
        v128_t acc[4] = {wasm_i32x4_splat(0), wasm_i32x4_splat(0), wasm_i32x4_splat(0), wasm_i32x4_splat(0)};
        for (int r = 0; r < group / run; r++) {
            v128_t lo[4], hi[4];  /* per plane: rows 0-7 and 8-15, 16-bit */
            for (int j = 0; j < bits; j++)
                lo[j] = hi[j] = wasm_i16x8_splat(0);
            for (int p = 0; p < run / 8; p++, table += 32) {
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
        v128_t scale[4], minimum[4];
        if (d8) {
            load_codes(w, step_s, scale);
            load_codes(w + TILE, step_m, minimum);
        } else {
            load_f16((const uint16_t *)w, scale);
            load_f16((const uint16_t *)w + TILE, minimum);
        }
        w += lut_scale_bytes(d8 ? 8 : 16);
        /* y += acc x scale x tscale + minimum x xsum */
        v128_t ts = wasm_f32x4_splat(tscale[g]), xs = wasm_f32x4_splat(xsum[g]);
        for (int q = 0; q < 4; q++)
            y[q] = wasm_f32x4_add(y[q], wasm_f32x4_add(wasm_f32x4_mul(wasm_f32x4_convert_i32x4(acc[q]),
                                                                      wasm_f32x4_mul(scale[q], ts)),
                                                       wasm_f32x4_mul(minimum[q], xs)));
    }
}

/* y (n) = W x from the tables of x (lut_table) and W in the CPU layout (lut_repack). Returns -1
   for an unsupported shape or format. */
EXPORT(lut_gemv) int lut_gemv(const uint8_t *w, int n, int k, int bits, int group, int scale_bits,
                              const int8_t *table, const float *tscale, const float *xsum, float *y) {
    if (!lut_supported(n, k, bits, group, scale_bits))
        return -1;
    for (int r0 = 0; r0 < n; r0 += TILE, w += lut_tile_bytes(k, bits, group, scale_bits)) {
        v128_t acc[4] = {wasm_f32x4_splat(0), wasm_f32x4_splat(0), wasm_f32x4_splat(0), wasm_f32x4_splat(0)};
        int d8 = scale_bits == 8;
        switch (bits) {
        case 2: d8 ? tile(w, k, 2, group, 1, table, tscale, xsum, acc) : tile(w, k, 2, group, 0, table, tscale, xsum, acc); break;
        case 3: d8 ? tile(w, k, 3, group, 1, table, tscale, xsum, acc) : tile(w, k, 3, group, 0, table, tscale, xsum, acc); break;
        default: d8 ? tile(w, k, 4, group, 1, table, tscale, xsum, acc) : tile(w, k, 4, group, 0, table, tscale, xsum, acc); break;
        }
        float out[TILE];
        for (int q = 0; q < 4; q++)
            wasm_v128_store(out + 4 * q, acc[q]);
        for (int r = 0; r < TILE && r0 + r < n; r++)
            y[r0 + r] = out[r];
    }
    return 0;
}

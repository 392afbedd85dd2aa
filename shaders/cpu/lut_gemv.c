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

/* One group's tables: for each chunk of 4 activations its 16 subset sums, quantised to int8 with
   the group's scale `tscale` = max |entry| / 127; `xsum` the group's activation sum. Each entry
   is summed in input order and rounded to nearest even, which the numpy model repeats exactly.
   Returns -1 for an unsupported shape. */
EXPORT(lut_table) int lut_table(const float *x, int k, int group, int8_t *table, float *tscale, float *xsum) {
    float entries[MAX_GROUP / 4 * 16];
    if (!lut_supported(1, k, 2, group))
        return -1;
    for (int g = 0; g < k / group; g++, x += group) {
        float top = 0, sum = 0;
        for (int c = 0; c < group / 4; c++) {
            const float *xc = x + 4 * c;
            for (int m = 0; m < 16; m++) {
                float e = (((m & 1 ? xc[0] : 0.0f) + (m & 2 ? xc[1] : 0.0f)) + (m & 4 ? xc[2] : 0.0f)) +
                          (m & 8 ? xc[3] : 0.0f);
                float a = __builtin_fabsf(e);
                entries[16 * c + m] = e;
                top = a > top ? a : top;
            }
        }
        for (int i = 0; i < group; i++)
            sum += x[i];
        float inv = top > 0 ? 127.0f / top : 0.0f;
        for (int i = 0; i < group * 4; i++)
            *table++ = (int8_t)__builtin_rintf(entries[i] * inv);
        tscale[g] = top / 127.0f;
        xsum[g] = sum;
    }
    return 0;
}

/* f16 bits (in the low half of u32 lanes) to f32: the exponent rebiased by one multiply by
   2^112, which also gets subnormals right; infinities and NaNs (never a valid scale) are not. */
static inline v128_t f16_to_f32(v128_t h) {
    v128_t magnitude = wasm_i32x4_shl(wasm_v128_and(h, wasm_i32x4_splat(0x7fff)), 13);
    v128_t sign = wasm_i32x4_shl(wasm_v128_and(h, wasm_i32x4_splat(0x8000)), 16);
    return wasm_v128_or(wasm_f32x4_mul(magnitude, wasm_f32x4_splat(0x1p112f)), sign);
}

/* y[16 rows] += (acc * scale * tscale + minimum * xsum) for one tile's group; `sm` its f16s. */
static inline void scale_group(v128_t y[4], const v128_t acc[4], const uint16_t *sm, float tscale, float xsum) {
    v128_t ts = wasm_f32x4_splat(tscale), xs = wasm_f32x4_splat(xsum);
    for (int h = 0; h < 2; h++) {
        v128_t s = wasm_v128_load(sm + 8 * h), m = wasm_v128_load(sm + TILE + 8 * h);
        v128_t sc[2] = {wasm_u32x4_extend_low_u16x8(s), wasm_u32x4_extend_high_u16x8(s)};
        v128_t mn[2] = {wasm_u32x4_extend_low_u16x8(m), wasm_u32x4_extend_high_u16x8(m)};
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

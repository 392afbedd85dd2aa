/* The CPU tile layout of a bit-plane weight (N rows, K inputs, b planes, groups of G), shared by
   the repack (lut_layout.c) and the GEMV (lut_gemv.c).

   Rows go in tiles of 16 (the last tile padded with zero rows). A tile is one sequential stream:
   with 8-bit scales first its rows' 16 f16 scale steps, then 16 f16 minimum steps; then for each
   group g, for each pair p of 4-activation chunks (8 inputs k = gG + 8p .. +7), for each plane j,
   16 bytes, byte r holding the plane-j bits of row r's inputs k..k+3 in its low nibble and
   k+4..k+7 in its high nibble (bit i of a nibble is input i of its chunk); after the group's
   G/8 x b x 16 code bytes come its 16 f16 scales, then its 16 f16 minimums (with 8-bit scales:
   16 scale codes a, then 16 minimum codes b; scale = a x step, minimum = -b x step). One 16-byte
   load thus feeds 32 table lookups (two swizzles of 16 rows), and the group's scales arrive just
   after its codes. Each nibble pair is exactly one byte of the GPU layout's u32 words, so the
   repack is a byte gather. */
#ifndef LUTLM_LUT_H
#define LUTLM_LUT_H

#include "cpu.h"
#include "f16.h"

#define TILE 16
#define MAX_GROUP 256  /* lutlm's largest group (compile/quant/format.py GROUPS) */

#define MAX_DIM (1 << 24)  /* rows or inputs: a tile's bytes stay far inside 32 bits */

/* The formats the CPU kernels take: 2-4 bit-planes, groups of 16 or a multiple of 32 up to 256,
   f16 (16) or 8-bit scales. */
static inline int lut_supported(int n, int k, int bits, int group, int scale_bits) {
    return n > 0 && n <= MAX_DIM && k <= MAX_DIM && bits >= 2 && bits <= 4 &&
           (group == 16 || (group % 32 == 0 && group <= MAX_GROUP)) && k >= group && k % group == 0 &&
           k % 32 == 0 && (scale_bits == 16 || scale_bits == 8);
}

/* The activation tables (lut_table) have one scale and one activation sum per span of inputs: 32,
   or 16 in a package with groups of 16, so that every weight of the package (whatever its group,
   a multiple of the span) reads the one table of its input (the GPU plan's matmul.Table.span). */
static inline int span_supported(int k, int span) {
    return (span == 16 || span == 32) && k > 0 && k <= MAX_DIM && k % span == 0;
}

/* One input's tables (lut_table), in this order: k/4 chunks of 16 int8 "hi" entries, the same of
   "lo" entries, k/span f32 table scales, k/span f32 activation sums; an entry is
   tscale x (hi + lo / 254). lut_table_bytes (exported for the host) is their size. */
size_t lut_table_bytes(int k, int span);
static inline size_t lut_table_lo_at(int k) { return 4 * (size_t)k; }
static inline size_t lut_table_scales_at(int k) { return 8 * (size_t)k; }

/* Bytes of one tile's group scales and minimums: 16 f16s each, or 16 8-bit codes each. */
static inline size_t lut_scale_bytes(int scale_bits) { return (scale_bits == 16 ? 4 : 2) * TILE; }

/* Bytes of one tile's group: the code bytes, then the scales and minimums. */
static inline size_t lut_block_bytes(int bits, int group, int scale_bits) {
    return (size_t)group / 8 * bits * TILE + lut_scale_bytes(scale_bits);
}

/* Bytes before a tile's first group: the steps of 8-bit scales. */
static inline size_t lut_tile_header(int scale_bits) { return scale_bits == 8 ? 4 * TILE : 0; }

static inline size_t lut_tile_bytes(int k, int bits, int group, int scale_bits) {
    return lut_tile_header(scale_bits) + (size_t)(k / group) * lut_block_bytes(bits, group, scale_bits);
}

/* A tile's 16 f16s (its rows' scales, minimums or 8-bit-scale steps) to f32, rows 0-3, 4-7, 8-11,
   12-15: what the LUT GEMV and the prefill GEMM both read after each group. */
static inline void tile_f16(const uint16_t *h, v128_t out[4]) {
    const v128_t zero = wasm_i16x8_splat(0);
    for (int i = 0; i < 2; i++) {
        v128_t v = wasm_v128_load(h + 8 * i);
        out[2 * i] = f16_to_f32(wasm_i16x8_shuffle(zero, v, 0, 8, 0, 9, 0, 10, 0, 11));
        out[2 * i + 1] = f16_to_f32(wasm_i16x8_shuffle(zero, v, 0, 12, 0, 13, 0, 14, 0, 15));
    }
}

/* A tile's 16 8-bit scale codes times their rows' steps. */
static inline void tile_codes(const uint8_t *c, const v128_t step[4], v128_t out[4]) {
    v128_t v = wasm_v128_load(c);
    v128_t half[2] = {wasm_u16x8_extend_low_u8x16(v), wasm_u16x8_extend_high_u8x16(v)};
    for (int i = 0; i < 2; i++) {
        out[2 * i] = wasm_f32x4_mul(wasm_f32x4_convert_i32x4(wasm_u32x4_extend_low_u16x8(half[i])), step[2 * i]);
        out[2 * i + 1] =
            wasm_f32x4_mul(wasm_f32x4_convert_i32x4(wasm_u32x4_extend_high_u16x8(half[i])), step[2 * i + 1]);
    }
}

/* With 8-bit scales, a tile's header: its rows' scale steps and minimum steps (negated: minimum =
   -b x step); `w` moves past it. */
static inline void tile_steps(const uint8_t **w, v128_t step_s[4], v128_t step_m[4]) {
    tile_f16((const uint16_t *)*w, step_s);
    tile_f16((const uint16_t *)*w + TILE, step_m);
    for (int q = 0; q < 4; q++)
        step_m[q] = wasm_f32x4_neg(step_m[q]);
    *w += lut_tile_header(8);
}

/* The scales and minimums that end a tile's group: f16 pairs, or (`d8`) codes times the tile's
   steps; `w` moves past them. */
static inline void group_scales(const uint8_t **w, int d8, const v128_t step_s[4], const v128_t step_m[4],
                                v128_t scale[4], v128_t minimum[4]) {
    if (d8) {
        tile_codes(*w, step_s, scale);
        tile_codes(*w + TILE, step_m, minimum);
    } else {
        tile_f16((const uint16_t *)*w, scale);
        tile_f16((const uint16_t *)*w + TILE, minimum);
    }
    *w += lut_scale_bytes(d8 ? 8 : 16);
}

#endif

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

#endif

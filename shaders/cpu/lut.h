/* The CPU tile layout of a bit-plane weight (N rows, K inputs, b planes, groups of G), shared by
   the repack (lut_layout.c) and the GEMV (lut_gemv.c).

   Rows go in tiles of 16 (the last tile padded with zero rows). A tile is one sequential stream:
   for each group g, for each pair p of 4-activation chunks (8 inputs k = gG + 8p .. +7), for each
   plane j, 16 bytes, byte r holding the plane-j bits of row r's inputs k..k+3 in its low nibble
   and k+4..k+7 in its high nibble (bit i of a nibble is input i of its chunk); after the group's
   G/8 x b x 16 code bytes come its 16 f16 scales, then its 16 f16 minimums. One 16-byte load thus
   feeds 32 table lookups (two swizzles of 16 rows), and the group's scales arrive just after its
   codes. Each nibble pair is exactly one byte of the GPU layout's u32 words, so the repack is a
   byte gather. */
#ifndef LUTLM_LUT_H
#define LUTLM_LUT_H

#include "cpu.h"

#define TILE 16
#define MAX_GROUP 256  /* lut_table's scratch holds one group's float table */

static inline int lut_supported(int n, int k, int bits, int group) {
    return n > 0 && bits >= 2 && bits <= 4 && group >= 32 && group <= MAX_GROUP && group % 32 == 0 &&
           k >= group && k % group == 0;
}

/* Bytes of one tile's group: the code bytes, then 16 f16 scales and 16 f16 minimums. */
static inline size_t lut_block_bytes(int bits, int group) { return (size_t)group / 8 * bits * TILE + 4 * TILE; }

#endif

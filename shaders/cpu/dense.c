/* Dense GEMV and GEMM for the dense codes a package stores for its 8-bit output head (and for every
   weight of a `dequant` baseline package), in integer arithmetic that is exact but for the
   activations' int16 rounding (about 1e-5 of the result).

   The package's GPU layout (`w` u32 (K/per, N), per = 32/bits codes a word, the row index
   fastest; `sm` u32 (K/G, N) f16 pairs, scale low, minimum high) is repacked at load time
   (dense_repack) into tiles of 16 rows, one sequential stream each: for each group g, for each
   chunk c of 4 inputs (4c .. 4c + 3 of the group), 4 x 16 bytes, vector v holding rows 4v .. 4v + 3
   and byte 4i + j of it row 4v + i's code of input 4c + ORDER[j], a code a byte whatever its width
   (2 and 4-bit codes widen at the repack); then the group's 16 rows' f16 pairs as the package has
   them. The 8-bit head is bound by memory bandwidth (about 10 GB/s from one core here): f16 pairs
   take 11% of its bytes where f32 scales and minimums took 20%, which outweighs their conversion.

   Each group's activations are quantised once per call to int16 with scale xs_g = max|x| / 32767.
   A vector's even bytes (AND 0xff per 16-bit lane) are row i's codes of inputs 0 and 1 of the chunk
   in 16-bit lanes 2i and 2i + 1, its odd bytes (shift right 8) those of inputs 2 and 3, so one
   i32x4.dot_i16x8 with the pair (x0, x1) splat to every 32-bit lane, and one with (x2, x3), adds
   each row's 4 products into its own 32-bit lane: 16 multiply-adds in 2 dots, 2 adds, an AND and a
   shift, where reading the GPU layout took 5 operations per 4. A row's group sum is at most
   G x 255 x 32767 < 2^31 for G <= 256. Then y += scale x (xs_g x sum) + minimum x sum_g x (f32). */
#include "f16.h"
#include "lut.h"   /* MAX_DIM, MAX_GROUP */
#include "vmath.h" /* hsum, hmax */

#define ROWS 16          /* rows per tile: 4 vectors of 4 */
#define GEMV_K (1 << 16) /* dense_gemv quantises x into static scratch for up to this many inputs */

/* Byte j of a row's 4 codes in a vector holds input ORDER[j] of the chunk (see above). */
static const int ORDER[4] = {0, 2, 1, 3};

/* Codes 2, 4 or 8 bits wide in groups of a multiple of 16 (lutlm's are 16 or multiples of 32; the
   quantisation takes 8 inputs at a time) up to MAX_GROUP, so a group's integer sum fits in 32 bits. */
static int dense_supported(int n, int k, int bits, int group) {
    return (bits == 2 || bits == 4 || bits == 8) && n > 0 && n <= MAX_DIM && k > 0 && k <= MAX_DIM &&
           group > 0 && group % 16 == 0 && group <= MAX_GROUP && k % group == 0;
}

static size_t dense_tile_bytes(int k, int group) { return (size_t)(k / group) * (ROWS * (size_t)group + 4 * ROWS); }

/* Bytes of a weight in the CPU layout, or 0 when the shape is not supported or the weight would not
   fit in half of wasm32's address space. */
EXPORT(dense_weight_bytes) size_t dense_weight_bytes(int n, int k, int bits, int group) {
    if (!dense_supported(n, k, bits, group))
        return 0;
    uint64_t bytes = (uint64_t)((n + ROWS - 1) / ROWS) * dense_tile_bytes(k, group);
    return bytes > 0x7fffffff ? 0 : (size_t)bytes;
}

/* The package's dense words `w` and f16 pairs `sm` (above) into `out` (dense_weight_bytes); rows
   past n are zero codes with zero pairs. Returns 0, or -1 for an unsupported shape. */
EXPORT(dense_repack) int dense_repack(const uint32_t *w, const uint32_t *sm, int n, int k, int bits, int group,
                                      uint8_t *out) {
    if (!dense_supported(n, k, bits, group))
        return -1;
    const int per = 32 / bits;
    const uint32_t mask = (1u << bits) - 1;
    for (int r0 = 0; r0 < n; r0 += ROWS)
        for (int g = 0; g < k / group; g++) {
            for (int c = 0; c < group / 4; c++)
                for (int r = 0; r < ROWS; r++)
                    for (int j = 0; j < 4; j++) {
                        int e = g * group + 4 * c + ORDER[j];
                        *out++ = r0 + r < n ? (w[(size_t)(e / per) * n + r0 + r] >> (e % per * bits)) & mask : 0;
                    }
            uint32_t *pairs = (uint32_t *)out;
            for (int r = 0; r < ROWS; r++)
                pairs[r] = r0 + r < n ? sm[(size_t)g * n + r0 + r] : 0;
            out += 4 * ROWS;
        }
    return 0;
}

/* Bytes of one token's quantised activations: k int16s, then k/group f32 scales, then k/group f32
   sums. */
static size_t token_bytes(int k, int group) { return 2 * (size_t)k + 8 * (size_t)(k / group); }

/* Bytes of dense_gemm's scratch for m tokens, or 0 for an unsupported shape or one that would not
   fit in half of wasm32's address space. */
EXPORT(dense_gemm_scratch) size_t dense_gemm_scratch(int m, int k, int group) {
    if (m < 1 || !dense_supported(1, k, 8, group))
        return 0;
    uint64_t bytes = (uint64_t)m * token_bytes(k, group);
    return bytes > 0x7fffffff ? 0 : (size_t)bytes;
}

/* x (k) to `q`: per group q = x x 32767 / max|x| rounded to nearest even (|q| <= 32767), the group's
   scale max|x| / 32767 and its sum of x (4 lanes, then hsum) from the unquantised x. */
static void quantise(const float *x, int k, int group, int16_t *q, float *xs, float *xsum) {
    for (int g = 0; g < k / group; g++, x += group, q += group) {
        v128_t top = wasm_f32x4_splat(0), sum = wasm_f32x4_splat(0);
        for (int e = 0; e < group; e += 4) {
            v128_t v = wasm_v128_load(x + e);
            top = wasm_f32x4_pmax(top, wasm_f32x4_abs(v));
            sum = wasm_f32x4_add(sum, v);
        }
        float t = hmax(top);
        v128_t inv = wasm_f32x4_splat(t > 0 ? 32767.0f / t : 0.0f);
        for (int e = 0; e < group; e += 8) {
            v128_t a = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(wasm_f32x4_mul(wasm_v128_load(x + e), inv)));
            v128_t b = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(wasm_f32x4_mul(wasm_v128_load(x + e + 4), inv)));
            wasm_v128_store(q + e, wasm_i16x8_narrow_i32x4(a, b));
        }
        xs[g] = t / 32767.0f;
        xsum[g] = hsum(sum);
    }
}

/* One tile's 16 rows of W x for one token's quantised activations, into out. */
static void tile(const uint8_t *w, int k, int group, const int16_t *q, const float *xs, const float *xsum,
                 float *out) {
    const v128_t even = wasm_i16x8_splat(0xff);
    v128_t y[4] = {wasm_f32x4_splat(0), wasm_f32x4_splat(0), wasm_f32x4_splat(0), wasm_f32x4_splat(0)};
    for (int g = 0; g < k / group; g++) {
        v128_t acc[4] = {wasm_i32x4_splat(0), wasm_i32x4_splat(0), wasm_i32x4_splat(0), wasm_i32x4_splat(0)};
        for (int c = 0; c < group / 4; c++, q += 4, w += 4 * 16) {
            v128_t x01 = wasm_v128_load32_splat(q), x23 = wasm_v128_load32_splat(q + 2);
            for (int v = 0; v < 4; v++) {
                v128_t codes = wasm_v128_load(w + 16 * v);
                acc[v] = wasm_i32x4_add(acc[v], wasm_i32x4_add(wasm_i32x4_dot_i16x8(wasm_v128_and(codes, even), x01),
                                                               wasm_i32x4_dot_i16x8(wasm_u16x8_shr(codes, 8), x23)));
            }
        }
        v128_t s = wasm_f32x4_splat(xs[g]), sx = wasm_f32x4_splat(xsum[g]);
        for (int v = 0; v < 4; v++) {
            v128_t pairs = wasm_v128_load(w + 16 * v);
            v128_t part = wasm_f32x4_mul(f16_low(pairs), wasm_f32x4_mul(s, wasm_f32x4_convert_i32x4(acc[v])));
            y[v] = wasm_f32x4_add(y[v], wasm_f32x4_add(part, wasm_f32x4_mul(f16_high(pairs), sx)));
        }
        w += 4 * ROWS;
    }
    for (int v = 0; v < 4; v++)
        wasm_v128_store(out + 4 * v, y[v]);
}

/* y[t * ldy + r] = (W x_t)[r] for the m tokens x_t = x + t k, W repacked by dense_repack. The
   tokens' quantised activations go into `scratch` (dense_gemm_scratch) first; then each tile of
   rows serves all m tokens in turn, so its codes come from memory once. Returns -1 for an
   unsupported shape. */
EXPORT(dense_gemm) int dense_gemm(const uint8_t *w, int n, int k, int bits, int group, const float *x, int m,
                                  float *y, int ldy, uint8_t *scratch) {
    if (!dense_supported(n, k, bits, group) || !dense_gemm_scratch(m, k, group) || ldy < n)
        return -1;
    const size_t tb = token_bytes(k, group), groups = (size_t)(k / group);
    for (int t = 0; t < m; t++) {
        int16_t *q = (int16_t *)(scratch + t * tb);
        float *xs = (float *)(q + k);
        quantise(x + (size_t)t * k, k, group, q, xs, xs + groups);
    }
    for (int r0 = 0; r0 < n; r0 += ROWS, w += dense_tile_bytes(k, group))
        for (int t = 0; t < m; t++) {
            const int16_t *q = (const int16_t *)(scratch + t * tb);
            const float *xs = (const float *)(q + k);
            float out[ROWS];
            tile(w, k, group, q, xs, xs + groups, out);
            float *yt = y + (size_t)t * ldy + r0;
            for (int r = 0; r < ROWS && r0 + r < n; r++)
                yt[r] = out[r];
        }
    return 0;
}

/* y (n) = W x: dense_gemm for one token, its activations in static scratch (so no more than
   GEMV_K inputs). */
EXPORT(dense_gemv) int dense_gemv(const uint8_t *w, int n, int k, int bits, int group, const float *x, float *y) {
    static uint8_t scratch[2 * GEMV_K + 8 * (GEMV_K / 16)] __attribute__((aligned(16)));
    return k <= GEMV_K ? dense_gemm(w, n, k, bits, group, x, 1, y, n, scratch) : -1;
}

/* Dequantise GEMV and GEMM for the dense codes a package stores for its 8-bit output head and
   embedding (and for every weight of a `dequant` baseline package): `w` u32 (K/per, N) with per =
   32/bits codes a word, the code of input e in bits (e % per) x bits of word e / per, and `sm` u32
   (K/G, N) f16 pairs (scale low, minimum high), as compile/kernels/layout.py writes them. They are
   read in place, no repack. The row index is fastest, so a v128 load is one word column of 4 rows
   and a block of 16 rows takes each activation broadcast to 16 rows.

   A block walking all K/per word columns would read one 64-byte line from each of K/per rows of
   words N x 4 bytes apart, more streams than the hardware prefetcher follows (49152 x 576 at 8 bits
   ran at 1.2 GB/s). So the kernel makes one pass per group over all rows, reading the group's
   G/per rows of words sequentially, and adds each group's part into y:
   y += scale x sum_e code_e x_e + minimum x sum_e x_e, the code sum in f32. */
#include "f16.h"
#include "lut.h" /* MAX_DIM */

#define BLOCK 16 /* rows per block: 4 vectors of 4 */

static int dense_supported(int n, int k, int bits, int group) {
    return (bits == 2 || bits == 4 || bits == 8) && n > 0 && n <= MAX_DIM && k > 0 && k <= MAX_DIM && group > 0 &&
           k % group == 0 && group % (32 / bits) == 0;
}

/* Rows r0 .. r0 + 15 of an array of 4-byte words or floats as 4 vectors. A partial block (`full`
   0, `rows` valid) touches only its rows (zeros after them), so it never goes past the array. */
static inline __attribute__((always_inline)) void load_block(const void *row, int r0, int rows, const int full,
                                                             v128_t out[4]) {
    const uint32_t *at = (const uint32_t *)row + r0;
    if (full) {
        for (int q = 0; q < 4; q++)
            out[q] = wasm_v128_load(at + 4 * q);
        return;
    }
    uint32_t words[BLOCK] = {0};
    __builtin_memcpy(words, at, 4 * (size_t)rows);
    for (int q = 0; q < 4; q++)
        out[q] = wasm_v128_load(words + 4 * q);
}

static inline __attribute__((always_inline)) void store_block(float *row, int r0, int rows, const int full,
                                                              const v128_t v[4]) {
    float out[BLOCK];
    for (int q = 0; q < 4; q++)
        wasm_v128_store(full ? row + r0 + 4 * q : out + 4 * q, v[q]);
    if (!full)
        __builtin_memcpy(row + r0, out, 4 * (size_t)rows);
}

/* Group g's part of rows r0 .. r0 + rows - 1 for the m tokens: its words (G/per x 16 x 4 bytes)
   come from memory for the first token and from the cache for the others. `bits` and `full` are
   constants in each caller. */
static inline __attribute__((always_inline)) void group_block(const uint32_t *w, const uint32_t *sm, int n, int k,
                                                              const int bits, int group, int g, const float *x,
                                                              int m, float *y, int ldy, int r0, int rows,
                                                              const int full) {
    const int per = 32 / bits;
    const v128_t mask = wasm_i32x4_splat((1 << bits) - 1);
    v128_t pairs[4], scale[4], minimum[4];
    load_block(sm + (size_t)g * n, r0, rows, full, pairs);
    for (int q = 0; q < 4; q++)
        scale[q] = f16_low(pairs[q]), minimum[q] = f16_high(pairs[q]);
    w += (size_t)g * (group / per) * n;
    for (int t = 0; t < m; t++) {
        const float *xg = x + (size_t)t * k + (size_t)g * group;
        v128_t acc[4] = {wasm_f32x4_splat(0), wasm_f32x4_splat(0), wasm_f32x4_splat(0), wasm_f32x4_splat(0)};
        v128_t xs = wasm_f32x4_splat(0), yv[4];
        for (int i = 0; i < group / per; i++) {
            v128_t words[4];
            load_block(w + (size_t)i * n, r0, rows, full, words);
            for (int s = 0; s < per; s++) {
                v128_t xe = wasm_f32x4_splat(xg[per * i + s]);
                for (int q = 0; q < 4; q++) {
                    v128_t code = wasm_v128_and(wasm_u32x4_shr(words[q], s * bits), mask);
                    acc[q] = wasm_f32x4_add(acc[q], wasm_f32x4_mul(wasm_f32x4_convert_i32x4(code), xe));
                }
            }
        }
        for (int e = 0; e < group; e += 4)
            xs = wasm_f32x4_add(xs, wasm_v128_load(xg + e));
        xs = wasm_f32x4_add(xs, wasm_i32x4_shuffle(xs, xs, 2, 3, 0, 1));
        xs = wasm_f32x4_add(xs, wasm_i32x4_shuffle(xs, xs, 1, 0, 3, 2));
        load_block(y + (size_t)t * ldy, r0, rows, full, yv);
        for (int q = 0; q < 4; q++)
            yv[q] = wasm_f32x4_add(yv[q], wasm_f32x4_add(wasm_f32x4_mul(acc[q], scale[q]), wasm_f32x4_mul(minimum[q], xs)));
        store_block(y + (size_t)t * ldy, r0, rows, full, yv);
    }
}

/* Group g's pass over all rows; one instance per code width. */
typedef void pass_fn(const uint32_t *w, const uint32_t *sm, int n, int k, int group, int g, const float *x, int m,
                     float *y, int ldy);
#define PASS_FN(b)                                                                                                \
    static void pass_##b(const uint32_t *w, const uint32_t *sm, int n, int k, int group, int g, const float *x,   \
                         int m, float *y, int ldy) {                                                              \
        int r0 = 0;                                                                                               \
        for (; r0 + BLOCK <= n; r0 += BLOCK)                                                                      \
            group_block(w, sm, n, k, b, group, g, x, m, y, ldy, r0, BLOCK, 1);                                    \
        if (r0 < n)                                                                                               \
            group_block(w, sm, n, k, b, group, g, x, m, y, ldy, r0, n - r0, 0);                                   \
    }
PASS_FN(2)
PASS_FN(4)
PASS_FN(8)

/* y[t * ldy + r] = (W x_t)[r] for m tokens x_t = x + t k (dense_gemv is m = 1). Returns -1 for an
   unsupported shape (k % group, group % per, bits not 2, 4 or 8). */
EXPORT(dense_gemm) int dense_gemm(const uint32_t *w, const uint32_t *sm, int n, int k, int bits, int group,
                                  const float *x, int m, float *y, int ldy) {
    if (!dense_supported(n, k, bits, group) || m < 1 || ldy < n)
        return -1;
    pass_fn *pass = bits == 2 ? pass_2 : bits == 4 ? pass_4 : pass_8;
    for (int t = 0; t < m; t++)
        __builtin_memset(y + (size_t)t * ldy, 0, 4 * (size_t)n);
    for (int g = 0; g < k / group; g++)
        pass(w, sm, n, k, group, g, x, m, y, ldy);
    return 0;
}

/* y (n) = W x. */
EXPORT(dense_gemv) int dense_gemv(const uint32_t *w, const uint32_t *sm, int n, int k, int bits, int group,
                                  const float *x, float *y) {
    return dense_gemm(w, sm, n, k, bits, group, x, 1, y, n);
}

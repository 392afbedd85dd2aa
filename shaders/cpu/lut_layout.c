/* The CPU tile layout (lut.h) derived from a package's GPU layout at load time, so that one
   package serves both backends without storing the weights twice. Runs in wasm so the browser
   and Pyodide need no numpy. */
#include "lut.h"

/* Bytes of a weight in the CPU layout, or 0 when the shape or format is not supported or the
   weight would not fit in half of wasm32's address space (so no size or offset wraps). */
EXPORT(lut_weight_bytes) size_t lut_weight_bytes(int n, int k, int bits, int group, int scale_bits) {
    if (!lut_supported(n, k, bits, group, scale_bits))
        return 0;
    uint64_t bytes = (uint64_t)((n + TILE - 1) / TILE) * lut_tile_bytes(k, bits, group, scale_bits);
    return bytes > 0x7fffffff ? 0 : (size_t)bytes;
}

/* Row r0 + r of a GPU-layout array with `n` rows (the row index fastest), 0 past the last row. */
static inline uint32_t row_word(const uint32_t *words, int n, int r0, int r) {
    return r0 + r < n ? words[r0 + r] : 0;
}

/* One tile's f16 pairs from a GPU-layout row of words (low half, high half) as two runs of 16 f16s:
   a group's scales and minimums, or the steps of 8-bit scales. */
static uint8_t *tile_pairs(uint8_t *out, const uint32_t *words, int n, int r0) {
    uint16_t *low = (uint16_t *)out, *high = low + TILE;
    for (int r = 0; r < TILE; r++) {
        uint32_t pair = row_word(words, n, r0, r);
        low[r] = (uint16_t)pair, high[r] = (uint16_t)(pair >> 16);
    }
    return out + 4 * TILE;
}

/* One tile's group scales: f16 pairs (scale low, minimum high) as two runs of 16 f16s, or the two
   8-bit codes of group g, bytes 2(g % 2) and 2(g % 2) + 1 of word g / 2, as two runs of 16 bytes. */
static uint8_t *tile_scales(uint8_t *out, const uint32_t *sm, int n, int r0, int g, int scale_bits) {
    if (scale_bits == 16)
        return tile_pairs(out, sm + (size_t)g * n, n, r0);
    for (int r = 0; r < TILE; r++) {
        uint32_t codes = row_word(sm + (size_t)(g / 2) * n, n, r0, r) >> (16 * (g % 2));
        out[r] = (uint8_t)codes, out[TILE + r] = (uint8_t)(codes >> 8);
    }
    return out + lut_scale_bytes(8);
}

/* `planes` u32 (K/32, bits, N) and `sm` u32 (K/G, N) f16 pairs, or with 8-bit scales
   (ceil(K/G / 2) + 1, N) codes and steps, as compile/kernels/layout.py writes them (see
   docs/package-format.md), into `out` (lut_weight_bytes). Returns 0, or -1 when the shape or
   format is not supported. */
EXPORT(lut_repack) int lut_repack(const uint32_t *planes, const uint32_t *sm, int n, int k, int bits, int group,
                                  int scale_bits, uint8_t *out) {
    if (!lut_supported(n, k, bits, group, scale_bits))
        return -1;
    int groups = k / group;
    for (int r0 = 0; r0 < n; r0 += TILE) {
        if (scale_bits == 8)  /* the tile header: the steps, in the word row after the codes */
            out = tile_pairs(out, sm + (size_t)((groups + 1) / 2) * n, n, r0);
        for (int g = 0; g < groups; g++) {
            for (int p = 0; p < group / 8; p++) {
                int at = g * group + 8 * p;
                const uint32_t *word = planes + (size_t)(at / 32) * bits * n;
                for (int j = 0; j < bits; j++, out += TILE)
                    for (int r = 0; r < TILE; r++)
                        out[r] = (uint8_t)(row_word(word + (size_t)j * n, n, r0, r) >> (at % 32));
            }
            out = tile_scales(out, sm, n, r0, g, scale_bits);
        }
    }
    return 0;
}

/* The CPU tile layout (lut.h) derived from a package's GPU layout at load time, so that one
   package serves both backends without storing the weights twice. Runs in wasm so the browser
   and Pyodide need no numpy. */
#include "lut.h"

/* Bytes of a weight in the CPU layout, or 0 when the shape or format is not supported. */
EXPORT(lut_weight_bytes) size_t lut_weight_bytes(int n, int k, int bits, int group) {
    if (!lut_supported(n, k, bits, group))
        return 0;
    return (size_t)((n + TILE - 1) / TILE) * (k / group) * lut_block_bytes(bits, group);
}

/* `planes` u32 (K/32, bits, N) and `sm` u32 (K/G, N) f16 pairs (scale low, minimum high), as
   compile/kernels/layout.py writes them, into `out` (lut_weight_bytes). `scale_bits` is the
   package's (16, or 8 for 8-bit scale codes, whose `sm` layout is not read yet). Returns 0, or -1
   when the shape or format is not supported. */
EXPORT(lut_repack) int lut_repack(const uint32_t *planes, const uint32_t *sm, int n, int k, int bits, int group,
                                  int scale_bits, uint8_t *out) {
    if (!lut_supported(n, k, bits, group) || scale_bits != 16)
        return -1;
    for (int r0 = 0; r0 < n; r0 += TILE) {
        for (int g = 0; g < k / group; g++) {
            for (int p = 0; p < group / 8; p++) {
                int at = g * group + 8 * p;
                const uint32_t *word = planes + (size_t)(at / 32) * bits * n;
                for (int j = 0; j < bits; j++, out += TILE)
                    for (int r = 0; r < TILE; r++)
                        out[r] = r0 + r < n ? (uint8_t)(word[(size_t)j * n + r0 + r] >> (at % 32)) : 0;
            }
            uint16_t *scale = (uint16_t *)out, *minimum = scale + TILE;
            for (int r = 0; r < TILE; r++) {
                uint32_t pair = r0 + r < n ? sm[(size_t)g * n + r0 + r] : 0;
                scale[r] = (uint16_t)pair;
                minimum[r] = (uint16_t)(pair >> 16);
            }
            out += 4 * TILE;
        }
    }
    return 0;
}

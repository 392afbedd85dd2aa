/* f16 to f32 for the CPU kernels, which read the f16 scales and minimums of a package's weights
   (wasm SIMD has no f16 conversion). */
#ifndef LUTLM_F16_H
#define LUTLM_F16_H

#include "cpu.h"

/* Four f16s (the upper halves of u32 lanes, the lower halves zero) to f32: an arithmetic shift
   puts exponent and mantissa in place and keeps the sign, the mask clears the sign's copies, and
   one multiply by 2^112 rebiases the exponent, which also gets subnormals right; infinities and
   NaNs (never a valid scale) are not. */
static inline v128_t f16_to_f32(v128_t high_halves) {
    v128_t bits = wasm_v128_and(wasm_i32x4_shr(high_halves, 3), wasm_i32x4_splat((int32_t)0x8fffffff));
    return wasm_f32x4_mul(bits, wasm_f32x4_splat(0x1p112f));
}

/* The f16 in the low half of each u32 lane, and the one in the high half. */
static inline v128_t f16_low(v128_t pairs) { return f16_to_f32(wasm_i32x4_shl(pairs, 16)); }
static inline v128_t f16_high(v128_t pairs) {
    return f16_to_f32(wasm_v128_and(pairs, wasm_i32x4_splat((int32_t)0xffff0000)));
}

#endif

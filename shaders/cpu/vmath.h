/* exp and log for the non-matmul CPU ops (layers.c, attention.c, sampling.c), written out because
   the module is freestanding: __builtin_expf and friends would become imports that no host
   provides. Both are within about 1 ulp of the true value in f32 (no fused multiply-adds). */
#ifndef LUTLM_VMATH_H
#define LUTLM_VMATH_H

#include "cpu.h"

static inline float hsum(v128_t v) {
    return wasm_f32x4_extract_lane(v, 0) + wasm_f32x4_extract_lane(v, 1) +
           wasm_f32x4_extract_lane(v, 2) + wasm_f32x4_extract_lane(v, 3);
}

/* The largest lane; pmax keeps its first operand when a comparison with NaN fails. */
static inline float hmax(v128_t v) {
    v = wasm_f32x4_pmax(v, wasm_i32x4_shuffle(v, v, 2, 3, 0, 1));
    return wasm_f32x4_extract_lane(wasm_f32x4_pmax(v, wasm_i32x4_shuffle(v, v, 1, 0, 3, 2)), 0);
}

/* e^x per lane (Cephes expf): x = n ln2 + r with |r| <= ln2/2, ln2 split in two (Cody-Waite) so
   n ln2 is exact, e^r by a degree-7 polynomial, times 2^n. Clamping x to +-150 keeps n within
   +-217, so 2^n is two normal factors 2^(n/2) 2^(n - n/2): the last multiply overflows to inf or
   rounds to a subnormal or 0 exactly where e^x does, and NaN stays NaN (pmin/pmax keep it). */
static inline v128_t exp4(v128_t x) {
    x = wasm_f32x4_pmin(wasm_f32x4_pmax(x, wasm_f32x4_splat(-150.0f)), wasm_f32x4_splat(150.0f));
    v128_t n = wasm_f32x4_nearest(wasm_f32x4_mul(x, wasm_f32x4_splat(1.44269504088896341f)));
    v128_t r = wasm_f32x4_sub(wasm_f32x4_sub(x, wasm_f32x4_mul(n, wasm_f32x4_splat(0.693359375f))),
                              wasm_f32x4_mul(n, wasm_f32x4_splat(-2.12194440e-4f)));
    v128_t p = wasm_f32x4_splat(1.9875691500e-4f);
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.3981999507e-3f));
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(8.3334519073e-3f));
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(4.1665795894e-2f));
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(1.6666665459e-1f));
    p = wasm_f32x4_add(wasm_f32x4_mul(p, r), wasm_f32x4_splat(5.0000001201e-1f));
    p = wasm_f32x4_add(wasm_f32x4_add(wasm_f32x4_mul(wasm_f32x4_mul(p, r), r), r), wasm_f32x4_splat(1.0f));
    v128_t ni = wasm_i32x4_trunc_sat_f32x4(n);  /* NaN gives 0: p is NaN already */
    v128_t half = wasm_i32x4_shr(ni, 1), bias = wasm_i32x4_splat(127);
    v128_t s1 = wasm_i32x4_shl(wasm_i32x4_add(half, bias), 23);
    v128_t s2 = wasm_i32x4_shl(wasm_i32x4_add(wasm_i32x4_sub(ni, half), bias), 23);
    return wasm_f32x4_mul(wasm_f32x4_mul(p, s1), s2);
}

/* e^x of one float, through the same lanes so a tail matches the vector body bit for bit. */
static inline float exp1(float x) { return wasm_f32x4_extract_lane(exp4(wasm_f32x4_splat(x)), 0); }

/* Natural log (fdlibm/musl logf): x = 2^k (1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)), then
   log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)) with s = f / (2 + f), k ln2 split in two. */
static inline float log1(float x) {
    uint32_t ix = __builtin_bit_cast(uint32_t, x);
    int k = 0;
    if (ix < 0x00800000 || ix >= 0x7f800000) {  /* zero, subnormal, negative, inf or NaN */
        if (ix << 1 == 0)
            return -__builtin_inff();
        if (ix >> 31)
            return __builtin_nanf("");
        if (ix >= 0x7f800000)
            return x;
        k = -25;
        ix = __builtin_bit_cast(uint32_t, x * 0x1p25f);
    }
    ix += 0x3f800000 - 0x3f3504f3;
    k += (int)(ix >> 23) - 0x7f;
    float f = __builtin_bit_cast(float, (ix & 0x007fffff) + 0x3f3504f3) - 1.0f;
    float s = f / (2.0f + f), z = s * s, w = z * z;
    float r = z * (0xaaaaaa.0p-24f + w * 0x91e9ee.0p-25f) + w * (0xccce13.0p-25f + w * 0xf89e26.0p-26f);
    float hfsq = 0.5f * f * f, dk = (float)k;
    return s * (hfsq + r) + dk * 9.0580006145e-06f - hfsq + f + dk * 6.9313812256e-01f;
}

#endif

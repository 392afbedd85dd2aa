/* int16 activations for the CPU kernels' integer dot products (i32x4.dot_i16x8_s): a group of
   inputs scaled so its largest |x| becomes 32767 and rounded to nearest, so each value is off by
   at most half a step, 1.5e-5 of the group's largest |x|: unlike int8 activations (0.4%), well
   under the float reference's own tolerance for near-tied tokens. */
#ifndef LUTLM_Q16_H
#define LUTLM_Q16_H

#include "cpu.h"

/* x[0 .. len) (len a multiple of 8) into q with x ~ q x the returned scale (the group's largest
   |x| / 32767; 0 for a group of zeros, whose q are all 0), and its f32 sum into *sum (lanes
   summed in order, then added lane by lane, as lut_table sums a span) for the minimum term of
   W = code x scale + minimum. x x 32767 / top rounds to at most 32767 in f32, so the narrowing
   never saturates. */
static inline float quantize_group_i16(const float *x, int len, int16_t *q, float *sum) {
    v128_t top = wasm_f32x4_splat(0), s = wasm_f32x4_splat(0);
    for (int i = 0; i < len; i += 4) {
        v128_t v = wasm_v128_load(x + i);
        top = wasm_f32x4_pmax(top, wasm_f32x4_abs(v));
        s = wasm_f32x4_add(s, v);
    }
    top = wasm_f32x4_pmax(top, wasm_i32x4_shuffle(top, top, 2, 3, 0, 1));
    float t = wasm_f32x4_extract_lane(wasm_f32x4_pmax(top, wasm_i32x4_shuffle(top, top, 1, 0, 3, 2)), 0);
    v128_t inv = wasm_f32x4_splat(t > 0 ? 32767.0f / t : 0.0f);
    for (int i = 0; i < len; i += 8) {
        v128_t a = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(wasm_f32x4_mul(wasm_v128_load(x + i), inv)));
        v128_t b = wasm_i32x4_trunc_sat_f32x4(wasm_f32x4_nearest(wasm_f32x4_mul(wasm_v128_load(x + i + 4), inv)));
        wasm_v128_store(q + i, wasm_i16x8_narrow_i32x4(a, b));
    }
    *sum = wasm_f32x4_extract_lane(s, 0) + wasm_f32x4_extract_lane(s, 1) + wasm_f32x4_extract_lane(s, 2) +
           wasm_f32x4_extract_lane(s, 3);
    return t / 32767.0f;
}

#endif

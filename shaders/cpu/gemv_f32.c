/* The plain fp32 GEMV the LUT kernels are measured against: y = W x with W row-major (n, k),
   k a multiple of 4, four rows per pass so each load of x serves four rows. */
#include "cpu.h"

static float hsum(v128_t v) {
    return wasm_f32x4_extract_lane(v, 0) + wasm_f32x4_extract_lane(v, 1) +
           wasm_f32x4_extract_lane(v, 2) + wasm_f32x4_extract_lane(v, 3);
}

EXPORT(gemv_f32) void gemv_f32(const float *w, int n, int k, const float *x, float *y) {
    int r = 0;
    for (; r + 4 <= n; r += 4) {
        const float *w0 = w + (size_t)r * k, *w1 = w0 + k, *w2 = w1 + k, *w3 = w2 + k;
        v128_t a0 = wasm_f32x4_splat(0), a1 = a0, a2 = a0, a3 = a0;
        for (int i = 0; i < k; i += 4) {
            v128_t xv = wasm_v128_load(x + i);
            a0 = wasm_f32x4_add(a0, wasm_f32x4_mul(wasm_v128_load(w0 + i), xv));
            a1 = wasm_f32x4_add(a1, wasm_f32x4_mul(wasm_v128_load(w1 + i), xv));
            a2 = wasm_f32x4_add(a2, wasm_f32x4_mul(wasm_v128_load(w2 + i), xv));
            a3 = wasm_f32x4_add(a3, wasm_f32x4_mul(wasm_v128_load(w3 + i), xv));
        }
        y[r] = hsum(a0), y[r + 1] = hsum(a1), y[r + 2] = hsum(a2), y[r + 3] = hsum(a3);
    }
    for (; r < n; r++) {
        v128_t a = wasm_f32x4_splat(0);
        for (int i = 0; i < k; i += 4)
            a = wasm_f32x4_add(a, wasm_f32x4_mul(wasm_v128_load(w + (size_t)r * k + i), wasm_v128_load(x + i)));
        y[r] = hsum(a);
    }
}

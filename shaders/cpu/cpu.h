/* Shared by the CPU kernels: freestanding wasm32 (no libc), exported names, the SIMD intrinsics.

   Built by lutlm.wasm once per SIMD level; the relaxed build (-mrelaxed-simd) differs only where
   a relaxed instruction is exact for our inputs, which `SWIZZLE` is: table indices are always
   0..15, so the out-of-range rule that costs the baseline swizzle an extra instruction on x64
   never applies. */
#ifndef LUTLM_CPU_H
#define LUTLM_CPU_H

#include <stddef.h>
#include <stdint.h>
#include <wasm_simd128.h>

#define EXPORT(name) __attribute__((export_name(#name), visibility("default")))

#ifdef __wasm_relaxed_simd__
#define SWIZZLE wasm_i8x16_relaxed_swizzle
#else
#define SWIZZLE wasm_i8x16_swizzle
#endif

#endif

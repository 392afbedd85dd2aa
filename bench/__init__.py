"""Benchmarks: kernels (native and browser) now; whole-model and peer comparisons later."""

"""The prefill GEMM of bit-plane weights (shaders/cpu/gemm.c, `planes_gemm`) in wasmtime, against
the float oracle `QTensor.dequantize() @ x`.

Its one approximation is the int16 activations (q16.h): x of token t in group g becomes q x s_tg
with s_tg = max |x_g| / 32767 and |q x s_tg - x| <= s_tg / 2, and the integer dot multiplies that
error by the centred code (code - c, c = (2^b - 1) // 2) times the row's scale, the minimum
term taking the exact f32 sum of x. So row r of token t is off by at most
sum_g |scale_rg| s_tg / 2 sum_i |code_ri - c|, plus f32 rounding of the per-group folds; at
these shapes that is 1-5e-5 of the largest output, where the int8 tables of the LUT GEMV are off
by about 1%.
"""

from __future__ import annotations

import numpy as np
import pytest

from lutlm import wasm
from lutlm.quant.format import QTensor, QuantSpec, quantize_rtn

from cpu_harness import kernels

rng = np.random.default_rng(41)
LEVELS = list(wasm.LEVELS)


def quantized(n: int, k: int, bits: int | str, group: int = 32, scale_bits: int = 16) -> QTensor:
    return quantize_rtn(rng.standard_normal((n, k)).astype(np.float32), QuantSpec.parse(bits, group, scale_bits))


def oracle(q: QTensor, xs: np.ndarray) -> np.ndarray:
    return xs.astype(np.float64) @ q.dequantize().astype(np.float64).T


def bound(q: QTensor, xs: np.ndarray) -> np.ndarray:
    """(m, n) the most the int16 rounding can move each output (module docstring), plus 1e-6 of
    the row's sum of |w x| for f32 rounding."""
    n, k = q.codes.shape
    g = q.spec.group
    step = np.abs(xs.astype(np.float64)).reshape(len(xs), k // g, g).max(axis=2) / 32767  # (m, groups)
    centred = np.abs(q.codes.astype(np.int64) - ((1 << q.spec.bits) - 1) // 2).reshape(n, k // g, g).sum(axis=2)
    per_group = np.abs(q.scale.astype(np.float64)) * centred  # (n, groups)
    rounding = 1e-6 * (np.abs(xs.astype(np.float64)) @ np.abs(q.dequantize().astype(np.float64)).T)
    return step / 2 @ per_group.T + rounding


def check(q: QTensor, xs: np.ndarray, level: str = "simd128", ldy: int | None = None) -> float:
    """Y from the module held to the bound (rows past n untouched); its largest error relative to
    the largest output."""
    cpu = kernels(level)
    n = q.codes.shape[0]
    got = cpu.planes_gemm(cpu.repack(q), q, xs, ldy)
    assert np.isnan(got[:, n:]).all()
    want = oracle(q, xs)
    err = np.abs(got[:, :n] - want)
    assert np.all(err <= bound(q, xs))
    return float(err.max() / np.abs(want).max())


FORMATS = [(4, 32, 16), (3, 16, 8), (2, 64, 16), ("t", 32, 16), (4, 64, 8), (3, 128, 16)]
SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536), (1536, 576)]


@pytest.mark.parametrize("n,k,bits,group,scale_bits", [(*s, *f) for s in SHAPES for f in FORMATS if s[1] % f[1] == 0])
def test_smollm2_shapes(n, k, bits, group, scale_bits):
    """SmolLM2's block (q/k/v fused 960, o 576, gate/up 3072, down from 1536) in every plane count,
    ternary, groups of 16 to 128, f16 and 8-bit scales; a prefill chunk of 64 tokens, or 5 for the
    largest (to keep the file fast). Within 1e-4 of the largest output."""
    m = 5 if n * k > 1e6 else 64
    assert check(quantized(n, k, bits, group, scale_bits), rng.standard_normal((m, k)).astype(np.float32)) < 1e-4


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("n,k,bits,group,scale_bits,m,ldy", [
    (1, 32, 2, 32, 16, 1, 1), (17, 96, 3, 32, 16, 3, 20), (33, 576, 4, 16, 8, 65, 33), (40, 1536, 4, 128, 8, 7, 41),
    (16, 768, 4, 256, 16, 2, 16), (24, 192, "t", 96, 16, 4, 24), (7, 576, 2, 192, 16, 9, 8),
    (100, 576, 3, 64, 8, 64, 128)])
def test_awkward_shapes(level, n, k, bits, group, scale_bits, m, ldy):
    """Rows not a multiple of the 16-row tile, one row, one group, groups of 16 up to 256, odd
    token counts (a quad of tokens padded, a lone quad after the blocks of two), 65 tokens, y rows
    longer than n left alone, both builds (the bound alone: a few outputs may all be small)."""
    check(quantized(n, k, bits, group, scale_bits), rng.standard_normal((m, k)).astype(np.float32), level, ldy)


@pytest.mark.parametrize("level", LEVELS)
def test_int32_sums_at_their_largest(level):
    """Groups of 256 with every 4-bit code 15 (centred 8) and equal activations (all q 32767): each
    integer sum is 256 x 8 x 32767, the most it ever holds, and must be exact."""
    q = quantized(32, 512, 4, 256)
    q.codes[:] = 15
    xs = np.full((4, 512), 0.75, np.float32)
    xs[1] = -0.75
    assert check(q, xs, level) < 1e-6


@pytest.mark.parametrize("level", LEVELS)
def test_zero_groups_and_extremes(level):
    """A group of zero activations (scale 0), a token of zeros, one huge and one tiny activation
    sharing a group, and f16 scales and minimums of every kind (zeros of both signs, subnormals,
    the largest finite f16) on the rows."""
    special = np.array([0.0, -0.0, 6e-8, -6e-8, 6.1e-5, 65504.0, -65504.0, 0.5, -3.25, 1e-3], np.float16)
    q = quantized(special.size, 128, 3)
    q.scale[:] = special[:, None]
    q.minimum[:] = special[::-1, None]
    xs = rng.standard_normal((3, 128)).astype(np.float32)
    xs[0, 32:64] = 0
    xs[1] = 0
    xs[2, 64], xs[2, 65] = 1e4, 1e-4
    check(q, xs, level)


def test_scratch_sizes_and_refusals():
    """The scratch: int16 activations of the tokens padded to a multiple of 4, a scale and a sum per
    token and group, one tile's f32 outputs and one group's unpacked codes; 0 for no tokens, a group
    the tile layout does not take, or more than wasm32 can hold. The GEMM refuses those, a y row
    shorter than n, and formats outside lut.h's."""
    cpu = kernels()
    assert cpu.call("planes_gemm_scratch", 64, 576, 32) == 2 * 64 * 576 + 8 * 64 * 18 + 4 * 16 * 64 + 8 * 16 * 32
    assert cpu.call("planes_gemm_scratch", 3, 1536, 16) == 2 * 4 * 1536 + 8 * 4 * 96 + 4 * 16 * 4 + 8 * 16 * 16
    for m, k, group in ((0, 576, 32), (4, 576, 48), (4, 576, 512), (4, 48, 16), (1 << 20, 1 << 12, 32)):
        assert cpu.call("planes_gemm_scratch", m, k, group) == 0
    q = quantized(16, 64, 2)
    w, buf = cpu.repack(q), cpu.alloc(1 << 16)
    assert cpu.call("planes_gemm", w, 16, 64, 2, 32, 16, buf, 1, buf, 16, buf) == 0
    for n, bits, group, scale_bits, m, ldy in ((16, 2, 32, 16, 0, 16), (16, 2, 32, 16, 1, 15), (16, 5, 32, 16, 1, 16),
                                               (16, 2, 48, 16, 1, 16), (16, 2, 32, 4, 1, 16), (0, 2, 32, 16, 1, 16)):
        assert cpu.call("planes_gemm", w, n, 64, bits, group, scale_bits, buf, m, buf, ldy, buf) == -1

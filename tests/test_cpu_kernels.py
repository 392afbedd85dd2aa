"""The CPU kernels (shaders/cpu, WebAssembly SIMD built by lutlm.wasm) run natively in wasmtime.

The LUT GEMV is checked twice: against a numpy model of its integer algorithm (hi and lo int8
tables with one scale per span of 16 or 32 inputs, exact integer sums), which it must match to float
rounding, and against the float oracle `QTensor.dequantize() @ x` within the error that table
quantisation allows (test_lut_gemv_float_oracle). The dense kernels (int16 activations, exact
integer dots) are checked against a bit-for-bit numpy model and the float oracle; the prefill GEMM
of bit-plane weights is in test_cpu_gemm.py. Every weight goes in as a package stores it (the GPU
layout of compile/kernels/layout.py) and is repacked to the CPU layout by the module.
"""

from __future__ import annotations

import numpy as np
import pytest

from lutlm import wasm
from lutlm.errors import LutlmError
from lutlm.models import llama
from lutlm.package import write
from lutlm.quant.pipeline import Request, quantize
from lutlm.quant.format import QTensor, QuantSpec, StepGrid, quantize_rtn
from runtime_py.package import folder_reader, load_tensors, read_manifest

from cpu_harness import default_span, kernels
from engine_fixtures import tiny_checkpoint

rng = np.random.default_rng(37)
LEVELS = list(wasm.LEVELS)
SMOLLM2 = [(576, 576), (960, 576), (1536, 576), (3072, 576), (576, 1536)]  # (N, K): o, q/k/v-ish, kv, gate/up, down
MASKS = ((np.arange(16)[:, None] >> np.arange(4)) & 1).astype(bool)  # bit i of entry m selects input i


def quantized(n: int, k: int, bits: int | str, group: int = 32, scale_bits: int = 16) -> QTensor:
    return quantize_rtn(rng.standard_normal((n, k)).astype(np.float32), QuantSpec.parse(bits, group, scale_bits))


def tables(x: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's tables, bit for bit: each chunk's 16 subset sums added in input order in f32,
    scaled by 127 / (the span's largest |entry|) to v, hi = v and lo = (v - hi) x 254 rounded to
    nearest even; (hi, lo tables (K/4, 16) int8, table scales, activation sums) per span."""
    k = x.size
    sel = np.where(MASKS, x.astype(np.float32).reshape(-1, 1, 4), np.float32(0))
    entries = ((sel[..., 0] + sel[..., 1]) + sel[..., 2]) + sel[..., 3]
    top = np.abs(entries).reshape(k // span, -1).max(axis=1)
    inv = np.where(top > 0, np.float32(127) / np.where(top > 0, top, 1), 0).astype(np.float32)
    v = entries * np.repeat(inv, span // 4)[:, None]
    hi = np.rint(v)
    lo = np.rint((v - hi) * np.float32(254))
    return hi.astype(np.int8), lo.astype(np.int8), top / np.float32(127), x.astype(np.float64).reshape(-1, span).sum(axis=1)


def lut_gemv_model(q: QTensor, x: np.ndarray, span: int | None = None) -> np.ndarray:
    """y = W x as the kernel computes it: per plane j and chunk c the hi and lo entries the plane's
    4 bits select, each summed exactly over each span, times 2^j; each span's 254 hi + lo times its
    table scale / 254 (in f32); then per group times the scale, plus minimum x the group's
    activation sum."""
    n, k = q.codes.shape
    g, span = q.spec.group, span or default_span(q.spec)
    hi, lo, tscale, xsum = tables(x, span)
    fine = 254 * hi.astype(np.int64) + lo
    chunks = q.codes.reshape(n, k // 4, 4).astype(np.int64)
    acc = np.zeros((n, k // span), np.int64)
    for j in range(q.spec.bits):
        index = (((chunks >> j) & 1) << np.arange(4)).sum(axis=-1)
        acc += fine[np.arange(k // 4), index].reshape(n, k // span, span // 4).sum(axis=-1) << j
    per_group = (acc * (tscale / np.float32(254))).reshape(n, k // g, g // span).sum(axis=-1)
    return (per_group * q.scale.astype(np.float64) + q.minimum.astype(np.float64) * xsum.reshape(-1, g // span).sum(axis=1)).sum(axis=1)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def run_lut(q: QTensor, x: np.ndarray, level: str = "simd128", span: int | None = None) -> np.ndarray:
    k = kernels(level)
    return k.lut_gemv(k.repack(q), q, x, span)


@pytest.mark.parametrize("level", LEVELS)
def test_module_has_no_imports(level):
    """Freestanding: no libc, no host functions; its own memory; only the kernels exported."""
    module = kernels(level).module
    assert [i.name for i in module.imports] == []
    assert {e.name for e in module.exports} == {"memory", "alloc", "reset", "lut_table", "lut_gemv", "planes_gemm",
                                                "planes_gemm_scratch", "lut_table_bytes", "lut_weight_bytes",
                                                "lut_repack", "dense_gemv", "dense_gemm", "dense_gemm_scratch",
                                                "dense_weight_bytes", "dense_repack", "gemv_f32", "release", "run",
                                                "run_words", "cpu_embed",
                                                "cpu_rms_norm", "cpu_swiglu", "cpu_rope_append", "cpu_attention",
                                                "cpu_attention_max_ctx", "cpu_argmax", "cpu_penalize", "cpu_sample",
                                                "cpu_nll"}


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("k,span", [(576, 32), (1536, 32), (576, 16), (48, 16)])
def test_tables_bit_for_bit(level, k, span):
    """The hi and lo tables and their scales exactly as the model's (a one-step difference in a
    single entry would hide under the GEMV's float tolerance); activation sums to f32 rounding.
    With a chunk of zeros, entries that cancel to zero, and a span of zeros (table scale 0)."""
    x = rng.standard_normal(k).astype(np.float32)
    x[:8] = 0
    x[8:12] = [1.5, -1.5, 0.25, 3.0]
    x[span:2 * span] = 0
    cpu = kernels(level)
    table, tscale, xsum = cpu.tables(x, span)
    hi, lo, ts, xs = tables(x, span)
    np.testing.assert_array_equal(cpu.get(table, np.int8, k * 8).reshape(2, -1, 16), [hi, lo])
    np.testing.assert_array_equal(cpu.get(tscale, np.float32, k // span), ts)
    np.testing.assert_allclose(cpu.get(xsum, np.float32, k // span), xs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k,span", [(576, 8), (576, 64), (40, 16), (0, 16), (1 << 25, 32)])
def test_tables_refuse_other_spans(k, span):
    """Spans other than 16 and 32, k not a multiple of the span, no inputs or too many: -1."""
    cpu = kernels()
    assert cpu.call("lut_table", cpu.alloc(4 * 576), k, span, *(cpu.alloc(4 * 576) for _ in range(3))) == -1


@pytest.mark.parametrize("bits,group,scale_bits", [(2, 32, 16), (3, 32, 16), (4, 32, 16), ("t", 32, 16),
                                                   (3, 16, 8), (2, 16, 8), (4, 64, 8)])
@pytest.mark.parametrize("n,k", SMOLLM2)
def test_lut_gemv_smollm2_shapes(n, k, bits, group, scale_bits):
    """Every LUT format of lutlm's packages: f16 scales, and 8-bit scale codes with per-row steps
    (groups of 16 take only those in a package)."""
    q = quantized(n, k, bits, group, scale_bits)
    x = rng.standard_normal(k).astype(np.float32)
    assert rel_err(run_lut(q, x), lut_gemv_model(q, x)) < 1e-5


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("n,k,bits,group,scale_bits", [
    (1, 32, 2, 32, 16), (17, 96, 3, 32, 16), (100, 576, 4, 32, 16), (33, 576, 2, 64, 16), (40, 1536, 3, 128, 16),
    (16, 768, 4, 256, 16), (24, 192, "t", 96, 16), (7, 576, 4, 192, 16), (5, 32, 3, 16, 16),
    (1, 32, 2, 16, 8), (19, 96, 4, 32, 8), (50, 576, 3, 192, 8)])
def test_lut_gemv_awkward_shapes(level, n, k, bits, group, scale_bits):
    """Rows not a multiple of the 16-row tile (padded by the repack, never written past N), one
    group, groups of 16 and up to 256 (several 32-input runs each), an odd number of groups with
    8-bit scales (a half-empty word in the package), both builds."""
    q = quantized(n, k, bits, group, scale_bits)
    x = rng.standard_normal(k).astype(np.float32)
    assert rel_err(run_lut(q, x, level), lut_gemv_model(q, x)) < 1e-5


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("n,k,bits,group,scale_bits,span", [
    (40, 576, 3, 64, 16, 16), (40, 576, 3, 64, 16, 32), (24, 768, 4, 256, 16, 16), (17, 576, 2, 32, 8, 16),
    (33, 1536, "t", 192, 16, 16)])
def test_lut_gemv_mixed_spans(level, n, k, bits, group, scale_bits, span):
    """A mixed-precision package's one table per input (span 16 when any of its weights has groups
    of 16) serves weights of every group: several spans per group, each with its own table scale."""
    q = quantized(n, k, bits, group, scale_bits)
    x = rng.standard_normal(k).astype(np.float32)
    assert rel_err(run_lut(q, x, level, span), lut_gemv_model(q, x, span)) < 1e-5


@pytest.mark.parametrize("group,span", [(16, 32), (32, 64), (32, 8)])
def test_lut_gemv_refuses_a_span_its_groups_do_not_hold(group, span):
    q = quantized(16, 64, 3, group, 8)
    cpu = kernels()
    w, y = cpu.repack(q), cpu.alloc(64)
    tables = cpu.tables(np.zeros(64, np.float32), 16)
    assert cpu.call("lut_gemv", w, 16, 64, 3, group, 8, span, *tables, y) == -1


def test_lut_table_bytes():
    """The table buffer holds the hi and lo tables, then each span's scale and sum; a span the
    inputs do not divide into is refused."""
    cpu = kernels()
    assert cpu.call("lut_table_bytes", 576, 32) == 576 * 8 + 576 // 32 * 8
    assert cpu.call("lut_table_bytes", 576, 64) == cpu.call("lut_table_bytes", 40, 16) == 0


def dense_oracle(q: QTensor, xs: np.ndarray) -> np.ndarray:
    return xs.astype(np.float64) @ q.dequantize().astype(np.float64).T


def dense_model(q: QTensor, x: np.ndarray) -> np.ndarray:
    """y = W x as dense_gemv computes it, bit for bit: per group x to int16 (x x 32767 / max|x|
    rounded to nearest even, all in f32), exact integer dots with the codes, then in f32 and group
    order y = y + (scale x (xs x dot) + minimum x xsum), xsum added in 4 lanes, then lane by lane."""
    n, k = q.codes.shape
    g = q.spec.group
    xg = x.astype(np.float32).reshape(-1, g)
    top = np.abs(xg).max(axis=1)
    inv = np.where(top > 0, np.float32(32767) / np.where(top > 0, top, 1), 0).astype(np.float32)
    qx = np.rint(xg * inv[:, None]).astype(np.int64)
    xs = top / np.float32(32767)
    lanes = np.zeros((k // g, 4), np.float32)
    for c in range(g // 4):
        lanes += xg[:, 4 * c:4 * c + 4]
    xsum = ((lanes[:, 0] + lanes[:, 1]) + lanes[:, 2]) + lanes[:, 3]
    dots = (q.codes.astype(np.int64).reshape(n, k // g, g) * qx).sum(axis=-1).astype(np.float32)
    scale, minimum = (a.astype(np.float16).astype(np.float32) for a in (q.scale, q.minimum))
    y = np.zeros(n, np.float32)
    for i in range(k // g):
        y = y + (scale[:, i] * (xs[i] * dots[:, i]) + minimum[:, i] * xsum[i])
    return y


def dense_quantized(n: int, k: int, bits: int, group: int) -> QTensor:
    return quantize_rtn(rng.standard_normal((n, k)).astype(np.float32), QuantSpec(bits, group))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("n,k,group", [(576, 576, 32), (49, 768, 64), (100, 768, 128), (3, 256, 256), (17, 96, 16),
                                       (3072, 576, 32), (576, 1536, 64)])
def test_dense_gemv(level, n, k, bits, group):
    """Repacked from the package's dense words and f16 pairs: every code width and group (16 to
    256), rows not a multiple of the 16-row tile (never written past n). Bit for bit as the numpy
    model; against the float oracle the only approximation is the int16 activations, each off by
    at most xs_g / 2 (xs_g = max|x_g| / 32767) and weighted by scale x code (the minimum meets the
    exact sum), so row r is within sum_g |scale_rg| xs_g / 2 sum_e code_e, plus f32 rounding. Over
    hundreds of rows that is below 1e-4 of the largest output (a few rows of groups of 256 can
    reach 3e-4: the codes are all positive, so their errors do not cancel as w x does)."""
    q = dense_quantized(n, k, bits, group)
    x = rng.standard_normal(k).astype(np.float32)
    cpu = kernels(level)
    got = cpu.dense_gemv(cpu.dense(q, bits), q, bits, x)
    np.testing.assert_array_equal(got, dense_model(q, x))
    w = q.dequantize().astype(np.float64)
    xs = np.abs(x.reshape(-1, group)).max(axis=1) / 32767
    codes = q.codes.reshape(n, k // group, group).sum(axis=-1)
    bound = (np.abs(q.scale.astype(np.float64)) * xs / 2 * codes).sum(axis=1) + 1e-5 * (np.abs(w) @ np.abs(x))
    assert np.all(np.abs(got - w @ x) <= bound)
    assert n < 576 or rel_err(got, w @ x) < 1e-4


@pytest.mark.parametrize("level", LEVELS)
def test_dense_gemv_at_its_integer_limits(level):
    """Groups of 256 with every code 255 and every activation at the group's largest magnitude: a
    row's group sum 256 x 255 x 32767 (just under 2^31); and the outlier channels of a real
    residual stream, 1000x the rest, which cost only their own group's precision."""
    q = dense_quantized(32, 512, 8, 256)
    q.codes[:] = 255
    for x in (np.full(512, -3.0, np.float32), np.where(rng.random(512) < 0.5, 2.0, -2.0).astype(np.float32)):
        cpu = kernels(level)
        got = cpu.dense_gemv(cpu.dense(q, 8), q, 8, x)
        np.testing.assert_array_equal(got, dense_model(q, x))
        assert rel_err(got, dense_oracle(q, x)) < 1e-6
    q = dense_quantized(576, 576, 8, 32)
    x = rng.standard_normal(576).astype(np.float32)
    x[[5, 77, 300]] = [900.0, -1200.0, 400.0]
    cpu = kernels(level)
    got = cpu.dense_gemv(cpu.dense(q, 8), q, 8, x)
    np.testing.assert_array_equal(got, dense_model(q, x))
    assert rel_err(got, dense_oracle(q, x)) < 1e-4


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("n,k,bits,group,m,ldy", [(49, 576, 8, 32, 64, 64), (3072, 576, 8, 32, 3, 3072),
                                                  (576, 1536, 4, 64, 1, 600), (20, 64, 2, 32, 7, 20)])
def test_dense_gemm(level, n, k, bits, group, m, ldy):
    """m tokens: each row of Y as dense_gemv gives it, bit for bit; rows of ldy > n left alone."""
    q = dense_quantized(n, k, bits, group)
    xs = rng.standard_normal((m, k)).astype(np.float32)
    cpu = kernels(level)
    w = cpu.dense(q, bits)
    got = cpu.dense_gemm(w, q, bits, xs, ldy)
    assert np.isnan(got[:, n:]).all()
    assert rel_err(got[:, :n], dense_oracle(q, xs)) < 1e-4
    for t in (0, m - 1):
        np.testing.assert_array_equal(got[t, :n], cpu.dense_gemv(w, q, bits, xs[t]))


def test_dense_repack_is_the_documented_layout():
    """dense.c's layout from the codes directly: per 16-row tile and group, per chunk of 4 inputs
    4 vectors of 4 rows x the codes of inputs 0, 2, 1, 3; then the 16 rows' f16 pairs (scale,
    minimum). Rows past n are zeros."""
    n, k, g = 20, 64, 32
    q = dense_quantized(n, k, 4, g)
    cpu = kernels()
    got = cpu.get(cpu.dense(q, 4), np.uint8, cpu.call("dense_weight_bytes", n, k, 4, g))
    codes = np.zeros((32, k), np.uint8)
    codes[:n] = q.codes
    pairs = np.zeros((32, k // g, 2), np.float16)
    pairs[:n] = np.stack([q.scale, q.minimum], axis=-1)
    want = []
    for t in range(2):
        rows = codes[16 * t:16 * t + 16].reshape(16, k // g, g // 4, 4)[..., [0, 2, 1, 3]]
        for group in range(k // g):
            want += [rows[:, group].transpose(1, 0, 2).reshape(-1)]
            want += [np.ascontiguousarray(pairs[16 * t:16 * t + 16, group]).view(np.uint8).reshape(-1)]
    np.testing.assert_array_equal(got, np.concatenate(want))


def test_dense_sizes_and_refusals():
    """Bits other than 2, 4, 8; groups not 16 or a multiple of 32 up to 256 (a larger one could
    overflow the 32-bit sums); k not a multiple of the group; no rows, inputs or tokens; a Y row
    shorter than n; more inputs than dense_gemv's static scratch holds."""
    cpu = kernels()
    assert cpu.call("dense_weight_bytes", 49152, 576, 8, 32) == 49152 // 16 * 18 * (16 * 32 + 64)
    assert cpu.call("dense_gemm_scratch", 8, 576, 32) == 8 * (2 * 576 + 8 * 18)
    for n, k, bits, group in ((16, 64, 3, 32), (16, 96, 8, 64), (16, 64, 8, 8), (16, 1024, 8, 512), (0, 64, 8, 32),
                              (16, 0, 8, 32), (1 << 25, 64, 8, 32)):
        assert cpu.call("dense_weight_bytes", n, k, bits, group) == 0
        assert cpu.call("dense_repack", 0, 0, n, k, bits, group, 0) == -1
    assert cpu.call("dense_gemm_scratch", 0, 64, 32) == cpu.call("dense_gemm_scratch", 1, 96, 64) == 0
    q = dense_quantized(16, 64, 8, 32)
    w, buf = cpu.dense(q, 8), cpu.alloc(4096)
    for m, ldy in ((0, 16), (1, 15)):
        assert cpu.call("dense_gemm", w, 16, 64, 8, 32, buf, m, buf, ldy, buf) == -1
    assert cpu.call("dense_gemv", w, 16, 64, 8, 48, buf, buf) == -1
    big = 1 << 17
    assert cpu.call("dense_gemv", w, 1, big, 8, 32, buf, buf) == -1


@pytest.mark.parametrize("level", LEVELS)
def test_lut_gemv_reads_every_kind_of_f16(level):
    """Scales and minimums the kernel turns into f32 with integer operations: zeros of both signs,
    subnormals, the largest finite f16, negative and positive values, one row per kind."""
    special = np.array([0.0, -0.0, 6e-8, -6e-8, 6.1e-5, 65504.0, -65504.0, 0.5, -3.25, 1e-3], np.float16)
    n = special.size
    q = quantized(n, 64, 3)
    q.scale[:] = special[:, None]
    q.minimum[:] = special[::-1, None]
    x = rng.standard_normal(64).astype(np.float32)
    want = lut_gemv_model(q, x)
    np.testing.assert_allclose(run_lut(q, x, level), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("level", LEVELS)
def test_lut_gemv_16_bit_sums_at_their_largest(level):
    """Equal positive inputs make every nonzero-index entry of a group's table 127 x (bits set)/4 at
    most, and all-ones codes at 4 bits select 127 from every chunk: a 32-input run sums 15 x 8 x
    127 = 15240 per row, the most the int16 hi accumulator ever holds, and must still be exact. The
    lo accumulator near its largest: a span of one 1 (its table's top) and 28 inputs whose chunk
    sums sit just under half a step above an integer (v = 100.499) gives entry 15 lo = 127 in 7 of
    every 8 chunks: 15 x 7 x 127 = 13335 per run."""
    q = quantized(32, 576, 4)
    q.codes[:] = 15
    x = np.full(576, 0.5, np.float32)
    want = lut_gemv_model(q, x)
    assert rel_err(run_lut(q, x, level), want) < 1e-5
    assert rel_err(want, q.dequantize().astype(np.float64) @ x) < 1e-6  # a table of exact entries
    x = np.tile(np.r_[1.0, 0, 0, 0, np.full(28, 100.499 / 127 / 4)], 576 // 32).astype(np.float32)
    _, lo, _, _ = tables(x, 32)
    assert (lo[:, 15].reshape(-1, 8)[:, 1:] == 127).all()
    want = lut_gemv_model(q, x)
    assert rel_err(run_lut(q, x, level), want) < 1e-5


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("bits,span", [(2, 32), (3, 32), (4, 32), ("t", 32), (3, 16)])
def test_lut_gemv_float_oracle(level, bits, span):
    """Against the dequantised weights times x. The only approximation is the table: entry e of
    span s becomes ts_s (hi + lo / 254) (ts_s = max |e| / 127) with |error| <= ts_s / 508, plus
    the f32 rounding of e x 127 / max |e| before the split (a relative 2^-23 of up to 127 steps, so
    below ts_s / 50000). Row r adds scale_rg x sum_j 2^j of span/4 such entries per plane for each
    span s of group g. So, with P_rs = |scale_rg| ts_s (2^b - 1), exactly

        |err_r| <= sum_s P_rs (1/508 + 2e-5) x span/4,

    plus f32 rounding (1e-5 of the row's sum of |w x|). That worst case assumes every rounding
    error has the same sign; they are really about uniform on +-ts/508 (variance (ts/254)^2/12),
    independent across chunks (the planes of one chunk may share an entry, so take them as fully
    correlated): every row must also be within 6 standard deviations. Over all rows that is
    about 1e-4 of the largest output, where one int8 per entry gave 1%."""
    q = quantized(1536, 576, bits, 64)
    x = rng.standard_normal(576).astype(np.float32)
    w = q.dequantize().astype(np.float64)
    got = run_lut(q, x, level, span=span)
    err = np.abs(got - w @ x)
    _, _, tscale, _ = tables(x, span)
    per_span = np.repeat(np.abs(q.scale.astype(np.float64)), 64 // span, axis=1) * tscale * ((1 << q.spec.bits) - 1)
    rounding = 1e-5 * (np.abs(w) @ np.abs(x))
    assert np.all(err <= (per_span * (1 / 508 + 2e-5) * span / 4).sum(axis=1) + rounding)
    assert np.all(err <= 6 * np.sqrt((per_span ** 2).sum(axis=1) * span / 4 / 12) / 254 + rounding)
    assert rel_err(got, w @ x) < 1e-4


@pytest.mark.parametrize("level", LEVELS)
def test_lut_gemv_outlier_channels(level):
    """Activations as a real LLM's residual stream has them: a few channels 100-1000x the rest,
    which set the table scale of their spans. With one int8 per entry the small channels lost
    their precision (1% error per GEMV, greedy tokens changed); hi and lo keep 1e-4."""
    q = quantized(576, 576, 4)
    x = rng.standard_normal(576).astype(np.float32)
    x[[5, 77, 300, 301]] = [400.0, -900.0, 150.0, 1200.0]
    w = q.dequantize().astype(np.float64)
    got = run_lut(q, x, level)
    assert rel_err(got, lut_gemv_model(q, x)) < 1e-5
    assert rel_err(got, w @ x) < 1e-4


@pytest.mark.parametrize("scale_bits", [16, 8])
def test_repack_is_the_documented_tile_layout(scale_bits):
    """lut.h's layout from the codes directly: per 16-row tile (8-bit scales: first its rows' f16
    steps), per group, pair of chunks and plane 16 bytes of nibbles (inputs 8p..8p+3 low, 8p+4..8p+7
    high), then 16 scales and 16 minimums (f16, or 8-bit codes). Rows past N are zeros."""
    n, k, g = 20, 96, 32
    q = quantized(n, k, 3, g, scale_bits)
    cpu = kernels()
    got = cpu.get(cpu.repack(q), np.uint8, cpu.call("lut_weight_bytes", n, k, 3, g, scale_bits))

    def padded(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, np.zeros((32 - n, *a.shape[1:]), a.dtype)])

    codes = padded(q.codes)
    if scale_bits == 16:
        scales = [padded(q.scale.astype(np.float16)), padded(q.minimum.astype(np.float16))]
    else:
        scales = [padded(c) for c in StepGrid.of(q.steps).codes(q.scale, q.minimum)]
        steps = padded(q.steps)
    want = []
    for t in range(2):
        rows = slice(16 * t, 16 * t + 16)
        if scale_bits == 8:
            want += [np.ascontiguousarray(steps[rows, i]).view(np.uint8) for i in range(2)]
        chunks = codes[rows].reshape(16, k // g, g // 8, 2, 4)
        for group in range(k // g):
            for p in range(g // 8):
                for j in range(3):
                    nib = (((chunks[:, group, p] >> j) & 1) << np.arange(4)).sum(axis=-1)
                    want.append((nib[:, 0] | nib[:, 1] << 4).astype(np.uint8))
            want += [np.ascontiguousarray(a[rows, group]).view(np.uint8) for a in scales]
    np.testing.assert_array_equal(got, np.concatenate(want))


@pytest.mark.slow
def test_a_package_runs_on_the_cpu(tmp_path):
    """One package, two backends: a tiny Llama compiled to 3-bit groups of 16 with 8-bit scales
    (the package's most involved `sm` layout); each layer-0 weight's `planes` and `sm` read from
    the shards as the GPU engine reads them, repacked by the module, and multiplied. Fused weights
    (q/k/v, gate/up) are their parts' rows in order."""
    ckpt = tiny_checkpoint(tmp_path / "hf")
    quantized, _, info = quantize(ckpt, Request(bits="3", method="rtn", group=16, scale_bits=8), None)
    write(tmp_path / "pkg", ckpt, quantized, info)
    read = folder_reader(str(tmp_path / "pkg"))
    manifest = read_manifest(read)
    tensors = load_tensors(manifest, read)

    def words(name: str) -> np.ndarray:
        return np.frombuffer(tensors[name], np.uint32).reshape(manifest["tensors"][name]["shape"])

    block = llama.block(0)
    parts = {**block.fused, block.attn_output: (block.attn_output,), block.ffn_down: (block.ffn_down,)}
    cpu = kernels()
    for name, names in parts.items():
        qs = [quantized[p] for p in names]
        q = QTensor(qs[0].spec, *(np.concatenate([getattr(p, f) for p in qs]) for f in ("codes", "scale", "minimum", "steps")))
        assert manifest["quantization"]["tensors"][name] == q.spec.name
        x = rng.standard_normal(q.codes.shape[1]).astype(np.float32)
        w = cpu.repack_words(words(f"{name}.planes"), words(f"{name}.sm"), q.codes.shape, q.spec)
        assert rel_err(cpu.lut_gemv(w, q, x), lut_gemv_model(q, x)) < 1e-5, name


@pytest.mark.parametrize("spec", [QuantSpec(8, 32), QuantSpec(8, 32, symmetric=True)], ids=str)
def test_8_bit_codes_are_refused(spec):
    """8-bit codes (the embedding and head) are for a dense kernel, not a bit-serial lookup."""
    q = quantize_rtn(rng.standard_normal((16, 64)).astype(np.float32), spec)
    with pytest.raises(LutlmError, match="do not take"):
        kernels().repack(q)


@pytest.mark.parametrize("n,k,bits,group,scale_bits", [
    (16, 48, 2, 32, 16), (16, 64, 5, 32, 16), (16, 64, 1, 32, 16), (16, 96, 2, 48, 16), (16, 64, 2, 512, 16),
    (16, 64, 2, 32, 4), (0, 64, 2, 32, 16), (-16, 64, 2, 32, 16), (1 << 25, 64, 2, 32, 16), (16, 1 << 25, 2, 32, 16),
    ((1 << 24), (1 << 24) - 64, 4, 64, 16)])
def test_weight_bytes_refuse_what_the_kernels_cannot_take(n, k, bits, group, scale_bits):
    """Shapes and formats outside lut.h's, and a weight too large for wasm32 memory: 0 bytes."""
    assert kernels().call("lut_weight_bytes", n, k, bits, group, scale_bits) == 0


def test_gemv_f32():
    """The fp32 baseline the LUT kernels are measured against: four rows per pass, a remainder."""
    n, k = 7, 96
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal(k).astype(np.float32)
    cpu = kernels()
    y = cpu.alloc(4 * n)
    cpu.call("gemv_f32", cpu.put(w), n, k, cpu.put(x), y)
    assert rel_err(cpu.get(y, np.float32, n), w.astype(np.float64) @ x) < 1e-5


@pytest.mark.slow  # two clang builds
def test_build_is_reproducible_and_cached(tmp_path, monkeypatch):
    """Same sources, flags and compiler: the same bytes under the same name in another cache, and
    no rebuild in the same one; the output lives in $LUTLM_CACHE."""
    monkeypatch.setenv("LUTLM_CACHE", str(tmp_path / "a"))
    first = wasm.build("simd128")
    assert first.parent == tmp_path / "a" / "wasm" and first.name.startswith("lutlm-cpu-simd128-")
    stamp = first.stat().st_mtime_ns
    assert wasm.build("simd128") == first and first.stat().st_mtime_ns == stamp
    monkeypatch.setenv("LUTLM_CACHE", str(tmp_path / "b"))
    again = wasm.build("simd128")
    assert again.name == first.name and again.read_bytes() == first.read_bytes()


def test_missing_toolchain_says_run_make_setup(monkeypatch):
    monkeypatch.setattr(wasm, "CLANG", "clang-19-not-installed")
    with pytest.raises(LutlmError, match="run make setup"):
        wasm.build("simd128")


def test_unknown_level_is_refused():
    with pytest.raises(LutlmError, match="unknown SIMD level"):
        wasm.build("avx512")

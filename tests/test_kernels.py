"""Every WGSL kernel TVM emits, run on the native adapter (Mesa lavapipe) against numpy.

Tolerances: matmuls and attention within 1e-5 of the largest reference magnitude (f32 sums in a
different order); elementwise ops within a few f32 ulps; token choices exact.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from lutlm.kernels import attention, layers, layout, matmul, sampling
from lutlm.quant.format import QuantSpec, quantize_rtn
from lutlm.reference import apply_rope, rms_norm, rope_tables, silu, softmax

from engine_fixtures import compile_package, tiny_checkpoint
from kernel_harness import backend, kernel, run
from lutlm_bench import step
from lutlm_bench.kernels import browser_outputs

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
rng = np.random.default_rng(1234)
TABLES = [matmul.Table(4, False), matmul.Table(4, True), matmul.Table(8, False), matmul.Table(8, True)]


def quantized(rows: int, cols: int, bits: int | str, group: int = 32, scale_bits: int | None = None):
    """`group` 16: with 8-bit scales and minimums, the only way the kernels take groups of 16."""
    scale_bits = scale_bits or (8 if group == 16 else 16)
    spec = QuantSpec.parse(bits, group, scale_bits) if bits != "s8" else QuantSpec(8, group, symmetric=True)
    return quantize_rtn(rng.standard_normal((rows, cols)).astype(np.float32), spec)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


def lut_gemv(q, x: np.ndarray, tab: matmul.Table) -> np.ndarray:
    k, n = q.codes.shape[1], q.codes.shape[0]
    table = run(kernel(matmul.lut_table, k, tab), {"x": x, "table": tab.size(k)}, {"x0": 0})["table"]
    meta = kernel(matmul.lut_gemv, k, q.spec.bits, q.spec.group, tab, q.spec.scale_bits)
    return run(meta, {"table": table, "w": layout.planes(q), "sm": layout.scale_min(q), "y": n}, {"n": n, "y0": 0})["y"]


@pytest.mark.parametrize("tab", TABLES, ids=str)
@pytest.mark.parametrize("bits", [1, 2, 3, 4, "t"])
def test_lut_gemv_smollm2_shape(bits, tab):
    if bits == 1:  # one bit-plane: codes {0, 1}, as the LUT kernel sees a single plane
        q = quantized(1536, 576, 2)
        q.codes &= 1
        q.spec = QuantSpec(2, 32)
        q = type(q)(SimpleNamespace(bits=1, group=32, scale_bits=16), q.codes, q.scale, q.minimum)
    else:
        q = quantized(1536, 576, bits)
    x = rng.standard_normal(576).astype(np.float32)
    want = q.dequantize().astype(np.float64) @ x
    assert rel_err(lut_gemv(q, x, tab), want) < 1e-5


@pytest.mark.parametrize("tab", [replace(t, span=16) for t in TABLES], ids=str)
@pytest.mark.parametrize("bits,group", [(2, 16), (3, 16), (4, 16), (3, 32), (2, 64)])
def test_lut_gemv_sums_per_16(bits, group, tab):
    """Groups of 16 with 8-bit scale codes and per-row steps, and the f16-scale kernels reading a
    table whose activation sums cover 16 inputs (a package with any group of 16 builds those)."""
    q = quantized(1536, 576, bits, group)
    x = rng.standard_normal(576).astype(np.float32)
    assert rel_err(lut_gemv(q, x, tab), q.dequantize().astype(np.float64) @ x) < 1e-5


@pytest.mark.parametrize("tab", [TABLES[0], TABLES[3], replace(TABLES[2], span=16)], ids=str)
@pytest.mark.parametrize("k,n,bits,group", [(576, 1536, 2, 32), (576, 1536, 3, 64), (1536, 576, 4, 96),
                                             (576, 100, 2, 192), (96, 100, 3, 32)])
def test_lut_gemv_8_bit_scales(k, n, bits, group, tab):
    """8-bit scale codes in groups of 32 or more, two groups' codes per word; an odd number of
    groups per row (576 / 64, 576 / 192, 96 / 32) leaves the last word half empty."""
    q = quantized(n, k, bits, group, scale_bits=8)
    x = rng.standard_normal(k).astype(np.float32)
    assert rel_err(lut_gemv(q, x, tab), q.dequantize().astype(np.float64) @ x) < 1e-5


@pytest.mark.parametrize("bits", [4, 2])
def test_lut_gemv_f16_table(bits):
    """The f16-table variant (adapters with shader-f16): entries rounded to f16, so 2e-3."""
    if "shader-f16" not in backend().features:
        pytest.skip("adapter has no shader-f16")
    q = quantized(1536, 576, bits)
    x = rng.standard_normal(576).astype(np.float32)
    assert rel_err(lut_gemv(q, x, matmul.Table(8, False, "float16")), q.dequantize().astype(np.float64) @ x) < 2e-3


def test_stream_read():
    w = rng.integers(0, 2**32, (20, 100), dtype=np.uint64).astype(np.uint32)
    got = run(kernel(matmul.stream_read, 20), {"w": w, "y": 100}, {"n": 100})["y"]
    np.testing.assert_array_equal(got, np.bitwise_xor.reduce(w, axis=0).astype(np.float32))


@pytest.mark.parametrize("k,n,group", [(1536, 576, 64), (576, 192, 96), (96, 100, 32), (32, 1, 32)])
def test_lut_gemv_awkward_shapes(k, n, group):
    q = quantized(n, k, 3, group)
    x = rng.standard_normal(k).astype(np.float32)
    assert rel_err(lut_gemv(q, x, matmul.Table()), q.dequantize().astype(np.float64) @ x) < 1e-5


def test_lut_output_head():
    """A 4-bit tied embedding as output head (`--embed-bits 4`): 49152 x 576 through the LUT
    GEMV. (8-bit heads are stored dense and take the dequantise GEMV: test_dequant_gemv.)"""
    q = quantized(49152, 576, 4)
    x = rng.standard_normal(576).astype(np.float32)
    assert rel_err(lut_gemv(q, x, matmul.Table()), q.dequantize().astype(np.float64) @ x) < 1e-5


@pytest.mark.parametrize("tile", [1, 4, 8])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("k,n", [(576, 1536), (96, 100)])
def test_dequant_gemv(bits, k, n, tile):
    q = quantized(n, k, bits)
    x = rng.standard_normal(k).astype(np.float32)
    meta = kernel(matmul.dequant_gemv, k, bits, 32, tile)
    got = run(meta, {"x": x, "w": layout.dense(q, bits), "sm": layout.scale_min(q), "y": n}, {"n": n, "x0": 0, "y0": 0})["y"]
    assert rel_err(got, q.dequantize().astype(np.float64) @ x) < 1e-5


@pytest.mark.parametrize("m,k,n,bits,dense,group,scale_bits", [
    (1, 576, 192, 4, False, 32, 16), (5, 96, 100, 2, False, 32, 16), (17, 576, 1536, 4, False, 32, 16),
    (8, 1536, 576, "t", False, 32, 16), (9, 576, 700, "s8", True, 32, 16), (3, 96, 100, 4, True, 32, 16),
    (17, 576, 1536, 3, False, 16, 8), (5, 96, 100, 2, False, 16, 8), (17, 576, 1536, 2, False, 32, 8),
    (5, 576, 100, 3, False, 64, 8), (3, 1536, 576, 4, False, 192, 8)])
def test_prefill_gemm(m, k, n, bits, dense, group, scale_bits):
    """Bit-planes, or dense codes (8-bit tensors: the tied output head in the `score` plan); 8-bit
    scale codes in groups of 16 and more (an odd number of groups per row in 576 / 64)."""
    q = quantized(n, k, bits, group, scale_bits)
    x = rng.standard_normal((m, k)).astype(np.float32)
    meta = kernel(matmul.gemm, k, q.spec.bits, group, dense, scale_bits)
    w = layout.dense(q, q.spec.bits) if dense else layout.planes(q)
    got = run(meta, {"x": x, "w": w, "sm": layout.scale_min(q), "y": m * n}, {"m": m, "n": n, "ldy": n, "y0": 0})["y"]
    assert rel_err(got.reshape(m, n), x.astype(np.float64) @ q.dequantize().T.astype(np.float64)) < 1e-5


@pytest.mark.parametrize("bits,dense", [("s8", True), ("s8", False), (4, False)])
def test_embedding_gather(bits, dense):
    q = quantized(1000, 576, bits)
    ids = np.array([0, 999, 17, 5000, -3], np.int32)  # the last two are out of range: row 0
    w = layout.dense(q, 8) if dense else layout.planes(q)
    got = run(kernel(layers.embed, 576, q.spec.bits, 32, dense), {"ids": ids, "w": w, "sm": layout.scale_min(q),
                                                                  "x": 5 * 576}, {"m": 5, "n": 1000})["x"].reshape(5, 576)
    want = q.dequantize()[np.where((ids >= 0) & (ids < 1000), ids, 0)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("m,d", [(1, 576), (3, 576), (2, 30), (1, 3)])
def test_rms_norm(m, d):
    """d = 30 and 3 leave 2 and 3 elements to the tail after the unrolled walk (4 per iteration)."""
    x = rng.standard_normal((m, d)).astype(np.float32) * 3
    w = rng.standard_normal(d).astype(np.float32)
    got = run(kernel(layers.rms_norm, d), {"x": x, "weight": w, "out": m * d}, {"m": m, "eps": 1e-5})["out"]
    np.testing.assert_allclose(got.reshape(m, d), rms_norm(x, w, 1e-5), rtol=1e-5, atol=1e-5)


def rope_append(heads, kvh, d, n_rot, qkv, table, kc, vc, m, pos, ctx):
    res = run(kernel(layers.rope_append, heads, kvh, d, n_rot, qkv.shape[1]),
              {"qkv": qkv, "cs": table, "kc": kc, "vc": vc}, {"m": m, "pos": pos, "ctx": ctx})
    return res["qkv"].reshape(qkv.shape), res["kc"].reshape(kc.shape), res["vc"].reshape(vc.shape)


@pytest.mark.parametrize("m,pos,ctx,n_rot", [(3, 5, 16, 64), (1, 8191, 8192, 64), (1, 0, 1, 64), (2, 3, 8, 32)])
def test_rope_and_cache_append(m, pos, ctx, n_rot):
    """SmolLM2's qkv row: q (9 heads), k and v (3 each) of 64 dims. q turns in place, k turns on
    its way into the transposed key cache, v is stored as it is; older cache entries and v's
    slot in the row are untouched. n_rot 32: only each head's leading 32 dimensions turn."""
    heads, kvh, d = 9, 3, 64
    config = SimpleNamespace(rope_theta=100000.0, n_rot=n_rot)
    cos, sin = rope_tables(config, np.arange(ctx))
    qkv = rng.standard_normal((m, 960)).astype(np.float32)
    kc, vc = rng.standard_normal((2, kvh, d, ctx)).astype(np.float32)
    vc = vc.reshape(kvh, ctx, d)
    got_qkv, got_kc, got_vc = rope_append(heads, kvh, d, n_rot, qkv, np.stack([cos, sin], -1), kc, vc, m, pos, ctx)
    c, s_ = cos[pos:pos + m], sin[pos:pos + m]
    q = apply_rope(qkv[:, :576].reshape(m, 9, 64), c, s_, n_rot).reshape(m, 576)
    k = apply_rope(qkv[:, 576:768].reshape(m, 3, 64), c, s_, n_rot)
    np.testing.assert_allclose(got_qkv[:, :576], q, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_qkv[:, 768:], qkv[:, 768:])
    want_kc, want_vc = kc.copy(), vc.copy()
    want_kc[:, :, pos:pos + m] = k.transpose(1, 2, 0)
    want_vc[:, pos:pos + m] = qkv[:, 768:].reshape(m, 3, 64).transpose(1, 0, 2)
    np.testing.assert_allclose(got_kc, want_kc, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got_vc, want_vc)


@pytest.mark.parametrize("m,d", [(1, 576), (3, 576), (2, 30)])
def test_swiglu_and_residual_add_with_norm(m, d):
    gu = rng.standard_normal((3, 2 * 1536)).astype(np.float32) * 4
    got = run(kernel(layers.swiglu, 1536), {"gu": gu, "act": 3 * 1536}, {"m": 3})["act"]
    np.testing.assert_allclose(got.reshape(3, 1536), silu(gu[:, :1536]) * gu[:, 1536:], rtol=1e-5, atol=1e-6)
    x, y = rng.standard_normal((2, m, d)).astype(np.float32) * 3
    w = rng.standard_normal(d).astype(np.float32)
    res = run(kernel(layers.rms_norm, d, True), {"x": x, "y": y, "weight": w, "out": m * d}, {"m": m, "eps": 1e-5})
    np.testing.assert_array_equal(res["x"].reshape(m, d), x + y)
    np.testing.assert_allclose(res["out"].reshape(m, d), rms_norm(x + y, w, 1e-5), rtol=1e-5, atol=1e-5)


def attention_reference(q, kcache, vcache, pos):
    """q (m, H, D); caches (length, KVH, D) holding positions 0..pos+m-1; causal, GQA."""
    m, heads, d = q.shape
    group = heads // kcache.shape[1]
    out = np.zeros_like(q, dtype=np.float64)
    for t in range(m):
        n = pos + t + 1
        for h in range(heads):
            s = kcache[:n, h // group].astype(np.float64) @ q[t, h] / np.sqrt(d)
            out[t, h] = softmax(s) @ vcache[:n, h // group]
    return out


ATTENTION_CASES = [(1, 0, 1), (1, 37, 64), (7, 3, 16), (1, 8191, 8192), (5, 100, 300), (1, 130, 131), (20, 3, 40)]


@pytest.mark.parametrize("decode,m,pos,ctx", [(False, *c) for c in ATTENTION_CASES]
                         + [(True, *c) for c in ATTENTION_CASES if c[0] == 1])
def test_cache_append_and_attention(m, pos, ctx, decode):
    """Both attention paths: one invocation per (kv head, token) for prefill (20 tokens span two
    workgroups); for decode (one token), splits of SPLIT positions, then their merge."""
    heads, kvh, d = 9, 3, 64
    stride = (heads + 2 * kvh) * d
    old_k, old_v = rng.standard_normal((2, pos, kvh, d)).astype(np.float32)
    kc = np.zeros((kvh, d, ctx), np.float32)
    vc = np.zeros((kvh, ctx, d), np.float32)
    kc[:, :, :pos] = old_k.transpose(1, 2, 0)
    vc[:, :pos] = old_v.transpose(1, 0, 2)
    qkv = rng.standard_normal((m, stride)).astype(np.float32)
    qkv[:, :heads * d] *= 2
    identity = np.stack([np.ones((ctx, d // 2)), np.zeros((ctx, d // 2))], -1).astype(np.float32)  # no rotation
    _, kc, vc = rope_append(heads, kvh, d, d, qkv, identity, kc, vc, m, pos, ctx)
    if decode:
        rows = heads * attention.splits(ctx)
        parts = run(kernel(attention.split, heads, kvh, d, stride),
                    {"q": qkv, "kc": kc, "vc": vc, "part": rows * d, "stat": rows * 2}, {"pos": pos, "ctx": ctx})
        got = run(kernel(attention.merge, heads, d), {"part": parts["part"], "stat": parts["stat"], "out": heads * d},
                  {"pos": pos, "ctx": ctx})["out"].reshape(m, heads, d)
    else:
        got = run(kernel(attention.attention, heads, kvh, d, stride), {"q": qkv, "kc": kc, "vc": vc, "out": m * heads * d},
                  {"m": m, "pos": pos, "ctx": ctx})["out"].reshape(m, heads, d)
    k = qkv[:, heads * d:(heads + kvh) * d].reshape(m, kvh, d)
    v = qkv[:, (heads + kvh) * d:].reshape(m, kvh, d)
    want = attention_reference(qkv[:, :heads * d].reshape(m, heads, d), np.concatenate([old_k, k]),
                               np.concatenate([old_v, v]), pos)
    assert rel_err(got, want) < 1e-5


def test_nll():
    logits = rng.standard_normal((3, 49152)).astype(np.float32) * 3
    targets = np.array([5, 49151, 0], np.int32)
    got = run(kernel(sampling.nll), {"logits": logits, "targets": targets, "out": 3}, {"m": 3, "n": 49152})["out"]
    lse = np.log(np.exp(logits.astype(np.float64)).sum(axis=1))
    np.testing.assert_allclose(got, lse - logits[np.arange(3), targets], rtol=1e-5, atol=1e-4)


def test_offsets_of_table_input_and_gemv_output():
    """lut_table reads x[x0 : x0 + k]; lut_gemv writes y[y0 : y0 + n]; gemm writes rows of ldy."""
    q = quantized(100, 64, 4)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    tab = matmul.Table()
    table = run(kernel(matmul.lut_table, 64, tab), {"x": x, "table": tab.size(64)}, {"x0": 128})["table"]
    y = run(kernel(matmul.lut_gemv, 64, 4, 32, tab), {"table": table, "w": layout.planes(q), "sm": layout.scale_min(q),
                                                     "y": 110}, {"n": 100, "y0": 7})["y"]
    want = q.dequantize().astype(np.float64) @ x[2]
    assert rel_err(y[7:107], want) < 1e-5 and not y[:7].any() and not y[107:].any()
    y = run(kernel(matmul.gemm, 64, 4, 32), {"x": x, "w": layout.planes(q), "sm": layout.scale_min(q), "y": 3 * 130},
            {"m": 3, "n": 100, "ldy": 130, "y0": 20})["y"].reshape(3, 130)
    assert rel_err(y[:, 20:120], x.astype(np.float64) @ q.dequantize().T) < 1e-5 and not y[:, :20].any()


@pytest.mark.parametrize("n", [1, 1000, 49152])
def test_argmax(n):
    logits = rng.standard_normal(n).astype(np.float32)
    if n > 10:
        logits[[n // 3, n // 2]] = logits.max() + 1  # a tie: the lower index wins
    got = run(kernel(sampling.argmax), {"logits": logits, "out": 1}, {"n": n})["out"][0]
    assert got == int(np.argmax(logits))


def sample_once(logits, seed, step, temperature=1.0, top_k=0, top_p=1.0) -> int:
    sizes = {"n": logits.size, "temperature": temperature, "top_k": top_k, "top_p": top_p, "seed": seed, "step": step}
    return int(run(kernel(sampling.sample), {"logits": logits, "probs": logits.size, "out": 1}, sizes)["out"][0])


def test_sample_top_k_1_is_greedy_and_seeds_repeat():
    logits = rng.standard_normal(49152).astype(np.float32)
    assert sample_once(logits, 1, 0, top_k=1) == int(np.argmax(logits))
    assert sample_once(logits, 7, 3, 0.8, 40, 0.95) == sample_once(logits, 7, 3, 0.8, 40, 0.95)


def expected_distribution(logits, temperature, top_k, top_p):
    p = softmax(logits.astype(np.float64) / temperature)
    order = np.argsort(-p, kind="stable")
    keep = np.zeros(p.size, bool)
    keep[order[:top_k]] = True
    p = np.where(keep, p, 0) / p[keep].sum()
    cum = np.cumsum(p[order])
    nucleus = order[:int(np.searchsorted(cum, top_p)) + 1]
    q = np.zeros_like(p)
    q[nucleus] = p[nucleus]
    return q / q.sum()


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 8, 1.0), (1.3, 0, 0.8), (1.0, 12, 0.9)])
def test_sample_distribution(temperature, top_k, top_p):
    """400 seeded draws from 20 logits: never outside the top-k / top-p set, frequencies within
    sampling noise of the renormalised distribution (total variation below 0.12)."""
    logits = np.linspace(-2, 2, 20).astype(np.float32)[rng.permutation(20)]
    want = expected_distribution(logits, temperature, top_k or 20, top_p)
    draws = np.array([sample_once(logits, 42, step, temperature, top_k, top_p) for step in range(400)])
    assert set(draws) <= set(np.flatnonzero(want))
    freq = np.bincount(draws, minlength=20) / draws.size
    assert 0.5 * np.abs(freq - want).sum() < 0.12


def test_emitted_metadata_describes_the_wgsl():
    """Bindings, uniform layout, workgroup and grid are read back from TVM's output, and agree."""
    meta = kernel(matmul.lut_gemv, 576, 2, 32, matmul.Table())
    assert {b["name"]: b["access"] for b in meta["bindings"]} == {"table": "read", "w": "read", "sm": "read", "y": "read_write"}
    for i, b in enumerate(meta["bindings"]):
        assert f"@binding({i}) var<storage, {b['access']}> {b['name']}_ptr : array<{b['dtype']}>" in meta["wgsl"]
    assert meta["uniforms"] == [("n", "i32"), ("y0", "i32"), ("packGridDimX", "u32")]
    assert meta["workgroup"] == (matmul.GEMV_ROWS, 1, 1)
    from runtime_py.expr import evaluate

    assert [evaluate(e, {"n": 1537}) for e in meta["grid"]] == [-(-1537 // (matmul.GEMV_ROWS * matmul.GEMV_TILE)), 1, 1]
    attn = kernel(attention.attention, 9, 3, 64, 960)
    assert [evaluate(e, {"m": m}) for m in (5, 130) for e in attn["grid"]] == [
        v for m in (5, 130) for v in (-(-m // attention.PREFILL_WG), 3, 1)]  # (token blocks, kv heads, 1)
    assert "storageBarrier(); workgroupBarrier();" in kernel(sampling.argmax)["wgsl"]


def test_repetition_penalty():
    logits = np.array([2.0, -2.0, 0.5, 3.0, -1.0], np.float32)
    seen = np.array([0, 1, 4], np.int32)
    want = [1.6, -2.5, 0.5, 3.0, -1.25]
    for current, adjust in ((3, 3), (1, None), (7, None)):  # the running token: new, already seen, out of range
        expect = np.array(want, np.float32)
        if adjust is not None:
            expect[adjust] /= 1.25
        got = run(kernel(sampling.penalize), {"logits": logits, "seen": seen, "ids": np.array([current], np.int32)},
                  {"n": 5, "count": 3, "penalty": 1.25})["logits"]
        np.testing.assert_allclose(got, expect, rtol=1e-6)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("bits,group,scale_bits", [("2", 32, 16), ("3", 16, 8)])
def test_subgroup_kernels_equal_their_fallbacks_in_chromium(tmp_path, bits, group, scale_bits):
    """Subgroup GEMMs and prefill attention run only in a browser (Naga takes no `enable
    subgroups;`), so they are checked there against their fallbacks (checked against numpy above)
    on the same random inputs: a 13-token prefill chunk of a tiny model from position 5, every
    layer's GEMMs and attention, then the last token's logits."""
    package = tmp_path / "pkg"
    compile_package(tiny_checkpoint(tmp_path / "hf"), package, bits, group=group, scale_bits=scale_bits)
    wl, names, _ = step.workload(package, pos=5, prefill=13)
    assert "attention_sg" in names and [n for n in names if n.startswith("gemm")]
    assert all(n.endswith("_sg") for n in names if n.startswith("gemm"))
    fast, features = browser_outputs(wl, 0, ["x", "logits"])
    plain, without = browser_outputs(wl, 0, ["x", "logits"], without=["subgroups"])
    assert "subgroups" in features and "subgroups" not in without
    for name in ("x", "logits"):
        got, want = np.array(fast[name]), np.array(plain[name])
        assert np.isfinite(want).all() and np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())

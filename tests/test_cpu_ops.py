"""The non-matmul CPU ops of a Llama step (shaders/cpu/layers.c, attention.c, sampling.c) in
wasmtime against numpy oracles, for every SIMD level.

Exact where the kernel does the oracle's float operations in the same order (embedding, RoPE and
the cache layout); otherwise against float64 within a few f32 ulps (norm, SwiGLU's exp, attention,
logsumexp's log). Sampling is checked against a numpy model of compile/kernels/sampling.py's
algorithm (same bisections, same hash), plus the properties a sampler must have: seeded repeats,
top-k 1 and a tiny top-p equal argmax, and the draws' distribution (a chi-square bound over a fixed
set of seeds, so the test is deterministic).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lutlm import reference, wasm
from lutlm.kernels import layout
from lutlm.quant.format import QTensor, QuantSpec, quantize_rtn

from cpu_harness import kernels

rng = np.random.default_rng(53)
LEVELS = list(wasm.LEVELS)
MAX_CTX = 32768


def f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)


def i32(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.int32)


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


OPS = {"cpu_embed", "cpu_rms_norm", "cpu_swiglu", "cpu_rope_append", "cpu_attention", "cpu_attention_max_ctx",
       "cpu_argmax", "cpu_penalize", "cpu_sample", "cpu_nll"}


@pytest.mark.parametrize("level", LEVELS)
def test_ops_exported_without_imports(level):
    """The ops' exp and log are the module's own: no libm import crept in."""
    module = kernels(level).module
    assert [i.name for i in module.imports] == []
    assert OPS <= {e.name for e in module.exports}


# --- embedding ---------------------------------------------------------------------------------

def run_embed(level: str, q: QTensor, ids: list[int], dense_bits: int = 0) -> np.ndarray:
    k = kernels(level)
    n, width = q.codes.shape
    words = layout.dense(q, dense_bits) if dense_bits else layout.planes(q)
    x = k.alloc(4 * len(ids) * width)
    k.call("cpu_embed", k.put(i32(ids)), k.put(words.astype(np.uint32)), k.put(layout.scale_min(q).astype(np.uint32)),
           x, len(ids), n, width, dense_bits or q.spec.bits, q.spec.group, int(bool(dense_bits)))
    return k.get(x, np.float32, len(ids) * width).reshape(len(ids), width)


IDS = [3, 0, 47, -1, 48, 1 << 30, 11]  # -1, 48 (= n) and 2^30 read row 0


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("bits,group", [(2, 32), (3, 64), (4, 128)])
def test_embed_planes(level, bits, group):
    q = quantize_rtn(rng.standard_normal((48, 256)).astype(np.float32), QuantSpec.parse(bits, group))
    want = q.dequantize()[[i if 0 <= i < 48 else 0 for i in IDS]]
    np.testing.assert_array_equal(run_embed(level, q, IDS), want)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("bits,dense_bits", [(2, 2), (3, 4), (4, 4), (4, 8)])
def test_embed_dense(level, bits, dense_bits):
    q = quantize_rtn(rng.standard_normal((48, 192)).astype(np.float32), QuantSpec.parse(bits, 32))
    want = q.dequantize()[[i if 0 <= i < 48 else 0 for i in IDS]]
    np.testing.assert_array_equal(run_embed(level, q, IDS, dense_bits), want)


@pytest.mark.parametrize("level", LEVELS)
def test_embed_f16_scales(level):
    """Normal, subnormal, zero and negative-zero f16 scales and minimums convert exactly."""
    halves = np.array([1.0, -2.5, 6e-8, -3e-6, 6.1e-5, 0.0, -0.0, 65504.0], np.float16)
    n, width = 8, 256
    scale = rng.permuted(np.tile(halves, (n, 1)), axis=1)
    minimum = rng.permuted(np.tile(halves, (n, 1)), axis=1)
    codes = rng.integers(0, 4, (n, width), dtype=np.uint8)
    q = QTensor(QuantSpec.parse(2, 32), codes, scale, minimum)
    got = run_embed(level, q, list(range(n)))
    np.testing.assert_array_equal(got, q.dequantize())
    assert np.isfinite(got).all()


# --- rms norm, swiglu ----------------------------------------------------------------------------

@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("m,d", [(1, 1), (3, 7), (1, 576), (5, 130)])
@pytest.mark.parametrize("residual", [False, True])
def test_rms_norm(level, m, d, residual):
    k = kernels(level)
    x0, y, weight = (rng.standard_normal((m, d)) * 3).astype(np.float32), f32(rng.standard_normal((m, d))), \
        f32(rng.standard_normal(d))
    x, out = k.put(x0), k.alloc(4 * m * d)
    k.call("cpu_rms_norm", x, k.put(y) if residual else 0, k.put(weight), out, m, d, 1e-5)
    summed = x0 + y if residual else x0
    np.testing.assert_array_equal(k.get(x, np.float32, m * d).reshape(m, d), summed)
    want = reference.rms_norm(summed.astype(np.float64), weight, 1e-5)
    np.testing.assert_allclose(k.get(out, np.float32, m * d).reshape(m, d), want, rtol=2e-6, atol=1e-7)


def run_swiglu(level: str, g: np.ndarray, u: np.ndarray) -> np.ndarray:
    k = kernels(level)
    m, ff = g.shape
    act = k.alloc(4 * m * ff)
    k.call("cpu_swiglu", k.put(f32(np.concatenate([g, u], axis=1))), act, m, ff)
    return k.get(act, np.float32, m * ff).reshape(m, ff)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("m,ff", [(1, 1), (2, 7), (1, 1536), (3, 130)])
def test_swiglu(level, m, ff):
    g, u = f32(rng.standard_normal((m, ff)) * 6), f32(rng.standard_normal((m, ff)))
    want = reference.silu(g.astype(np.float64)) * u
    np.testing.assert_allclose(run_swiglu(level, g, u), want, rtol=1e-6, atol=1e-38)


@pytest.mark.parametrize("level", LEVELS)
def test_silu_extremes(level):
    """exp saturates to 0 and inf, so silu of a huge |g| is g or -0, never NaN; elsewhere the
    result is within rounding of float64's."""
    g = f32([-3.4e38, -1000, -100, -88, -87.5, -80, -1e-30, 0, 1e-30, 20, 88, 89, 100, 1000, 3.4e38,
             -103, -95, -90, -89])
    got = run_swiglu(level, g[None], np.ones((1, g.size), np.float32))[0]
    assert not np.isnan(got).any()
    assert got[g == 100] == 100 and got[g == 3.4e38] == np.float32(3.4e38)
    assert (got[g <= -1000] == 0).all() and np.signbit(got[g <= -100]).all()
    with np.errstate(over="ignore"):  # e^-g past f32's range is inf, so silu(g < -88.7) is -0 in f32
        e = np.exp(-g.astype(np.float64))
    want = g / (1 + np.where(e > np.finfo(np.float32).max, np.inf, e))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=2e-44)


@pytest.mark.parametrize("level", LEVELS)
def test_exp_accuracy(level):
    """cpu_sample's probs are e^(logit - max) at temperature 1: within 2 ulps of e^x over the
    whole normal range (and to the last subnormal bit below it)."""
    x = f32(np.concatenate([np.linspace(-87.3, 0, 40001), -rng.random(4000) * 1e-3, [-103.9, -100, -95, -90, 0]]))
    k = kernels(level)
    probs = k.alloc(4 * x.size)
    k.call("cpu_sample", k.put(x), probs, k.alloc(4), x.size, 1.0, 0, 1.0, 1, 0)
    got, want = k.get(probs, np.float32, x.size), np.exp(x.astype(np.float64))
    normal = want >= np.finfo(np.float32).tiny
    assert (np.abs(got[normal] - want[normal]) / want[normal]).max() < 2.5e-7
    np.testing.assert_allclose(got[~normal], want[~normal], rtol=0, atol=1.5e-45)


# --- rope and the cache --------------------------------------------------------------------------

SHAPES = [(9, 3, 64, 64), (4, 2, 32, 16), (2, 1, 128, 128), (3, 1, 12, 8)]  # heads, kv heads, head_dim, n_rot


def rope_table(ctx: int, n_rot: int) -> np.ndarray:
    angles = np.arange(ctx)[:, None] * 10000.0 ** (-np.arange(0, n_rot, 2) / n_rot)
    return f32(np.stack([np.cos(angles), np.sin(angles)], axis=-1))


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("heads,kv_heads,head_dim,n_rot", SHAPES)
@pytest.mark.parametrize("m,pos", [(1, 0), (1, 37), (64, 5), (6, 76)])  # the last runs past ctx 80
def test_rope_append(level, heads, kv_heads, head_dim, n_rot, m, pos):
    k = kernels(level)
    ctx, width = 80, (heads + 2 * kv_heads) * head_dim
    stride = width + 4  # rows padded: the stride is the caller's
    qkv0 = f32(rng.standard_normal((m, stride)))
    cs = rope_table(ctx, n_rot)
    kc0, vc0 = f32(rng.standard_normal((kv_heads, head_dim, ctx))), f32(rng.standard_normal((kv_heads, ctx, head_dim)))
    qkv, kc, vc = k.put(qkv0), k.put(kc0), k.put(vc0)
    k.call("cpu_rope_append", qkv, k.put(cs), kc, vc, m, pos, ctx, heads, kv_heads, head_dim, n_rot, stride)
    got = k.get(qkv, np.float32, m * stride).reshape(m, stride)

    n = min(m, ctx - pos)  # tokens past the context are left alone
    np.testing.assert_array_equal(got[n:], qkv0[n:])
    cos, sin = cs[pos:pos + n, :, 0], cs[pos:pos + n, :, 1]
    turned = reference.apply_rope(qkv0[:n, :(heads + kv_heads) * head_dim].reshape(n, -1, head_dim), cos, sin, n_rot)
    want = qkv0[:n].copy()
    want[:, :(heads + kv_heads) * head_dim] = turned.reshape(n, -1)
    np.testing.assert_array_equal(got[:n], want)

    keys = turned[:, heads:]  # (n, kv_heads, head_dim)
    values = qkv0[:n, (heads + kv_heads) * head_dim:width].reshape(n, kv_heads, head_dim)
    kc_want, vc_want = kc0.copy(), vc0.copy()
    kc_want[:, :, pos:pos + n] = keys.transpose(1, 2, 0)
    vc_want[:, pos:pos + n] = values.transpose(1, 0, 2)
    np.testing.assert_array_equal(k.get(kc, np.float32, kc0.size).reshape(kc0.shape), kc_want)
    np.testing.assert_array_equal(k.get(vc, np.float32, vc0.size).reshape(vc0.shape), vc_want)


# --- attention -----------------------------------------------------------------------------------

def run_attention(level: str, q: np.ndarray, kc: np.ndarray, vc: np.ndarray, pos: int, heads: int,
                  q_stride: int) -> np.ndarray:
    k = kernels(level)
    kv_heads, head_dim, ctx = kc.shape
    m = q.shape[0]
    out = k.put(np.full(m * heads * head_dim, 7.0, np.float32))  # a token not attended keeps its 7s
    k.call("cpu_attention", k.put(f32(q)), k.put(f32(kc)), k.put(f32(vc)), out, m, pos, ctx, heads, kv_heads,
           head_dim, q_stride)
    return k.get(out, np.float32, m * heads * head_dim).reshape(m, heads * head_dim)


def attention_case(heads: int, kv_heads: int, head_dim: int, m: int, pos: int, ctx: int, sharp: float = 1.0):
    q_stride = (heads + 2 * kv_heads) * head_dim + 4
    q = f32(rng.standard_normal((m, q_stride)) * sharp)
    kc, vc = f32(rng.standard_normal((kv_heads, head_dim, ctx))), f32(rng.standard_normal((kv_heads, ctx, head_dim)))
    return q, kc, vc, q_stride


def attention_oracle(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, pos: int, heads: int) -> np.ndarray:
    kv_heads, head_dim, ctx = kc.shape
    m = min(q.shape[0], ctx - pos)
    length = pos + m
    keys = kc[:, :, :length].transpose(2, 0, 1).astype(np.float64)
    values = vc[:, :length].transpose(1, 0, 2).astype(np.float64)
    queries = q[:m, :heads * head_dim].reshape(m, heads, head_dim).astype(np.float64)
    return reference.attention(queries, keys, values, pos)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (4, 4, 32), (8, 1, 128), (5, 1, 12), (6, 2, 36)])
@pytest.mark.parametrize("m,pos", [(1, 0), (1, 300), (64, 21), (3, 254)])  # the last runs past ctx 256
def test_attention(level, heads, kv_heads, head_dim, m, pos):
    ctx = 256 if pos == 254 else 512
    q, kc, vc, q_stride = attention_case(heads, kv_heads, head_dim, m, pos, ctx)
    got, want = run_attention(level, q, kc, vc, pos, heads, q_stride), attention_oracle(q, kc, vc, pos, heads)
    np.testing.assert_allclose(got[:len(want)], want, rtol=1e-5, atol=2e-6)
    assert (got[len(want):] == 7).all()


@pytest.mark.parametrize("level", LEVELS)
def test_attention_sharp_scores(level):
    """Scores in the hundreds (a softmax near one-hot) stay finite and within their own f32
    rounding: a score of 300 carries 3e-5 of it, which e^ passes on to the weights."""
    q, kc, vc, q_stride = attention_case(9, 3, 64, 2, 100, 128, sharp=40.0)
    want = attention_oracle(q, kc, vc, 100, 9)
    np.testing.assert_allclose(run_attention(level, q, kc, vc, 100, 9, q_stride), want, rtol=0, atol=2e-4)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("pos", [12000, MAX_CTX - 1])  # the scratch holds 2 heads' scores, then 1
def test_attention_long_context(level, pos):
    """Up to the scratch's MAX_CTX positions: fewer query heads per pass, the same result."""
    assert kernels(level).call("cpu_attention_max_ctx") == MAX_CTX
    q, kc, vc, q_stride = attention_case(4, 1, 8, 1, pos, MAX_CTX)
    want = attention_oracle(q, kc, vc, pos, 4)
    np.testing.assert_allclose(run_attention(level, q, kc, vc, pos, 4, q_stride), want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("level", LEVELS)
def test_attention_refuses_past_max_ctx(level):
    q, kc, vc, q_stride = attention_case(2, 1, 4, 1, 0, MAX_CTX + 4)
    assert (run_attention(level, q, kc, vc, 0, 2, q_stride) == 7).all()


# --- argmax, penalty -----------------------------------------------------------------------------

def run_argmax(level: str, logits) -> int:
    k = kernels(level)
    out = k.alloc(4)
    k.call("cpu_argmax", k.put(f32(logits)), out, len(logits))
    return int(k.get(out, np.int32, 1)[0])


@pytest.mark.parametrize("level", LEVELS)
def test_argmax(level):
    nan, inf = np.nan, np.inf
    for n in (1, 3, 4, 7, 49152, 49153):
        logits = f32(rng.standard_normal(n))
        assert run_argmax(level, logits) == int(np.argmax(logits))
    cases = {(1, 5, 5, 2): 1, (1, 2, 3, 9, 0, 9): 3, (nan, 1, nan, 2): 3, (nan, nan, nan, nan, nan): 0,
             (-inf, -inf, nan): 0, (nan, -inf, nan, nan, nan, -inf): 1, (nan, 0, inf, inf): 2,
             (0, 0, 0, 0, 1, 1): 4, (3, 1, 1, 1, 1, 1, 1, 1, 1, 3): 0}
    for logits, want in cases.items():
        assert run_argmax(level, logits) == want, logits


def penalize_oracle(logits: np.ndarray, seen: list[int], token: int, penalty: float) -> np.ndarray:
    out = logits.copy()
    for i in set(seen) | {token}:
        if 0 <= i < len(out):
            out[i] = out[i] / np.float32(penalty) if out[i] > 0 else out[i] * np.float32(penalty)
    return out


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("seen,token", [([], 4), ([3, 7, 0], 7), ([3, 7, 0], 9), ([-1, 50, 2], 50), ([5], -3)])
def test_penalize(level, seen, token):
    k = kernels(level)
    logits0 = f32(rng.standard_normal(50))
    logits = k.put(logits0)
    k.call("cpu_penalize", logits, k.put(i32(seen or [0])), k.put(i32([token])), 50, len(seen), 1.3)
    np.testing.assert_array_equal(k.get(logits, np.float32, 50), penalize_oracle(logits0, seen, token, 1.3))


# --- sampling ------------------------------------------------------------------------------------

def uniform(seed: int, step: int) -> float:
    """compile/kernels/sampling.py's PCG-style hash of (seed, step): 24 bits in [0, 1)."""
    mask = 0xFFFFFFFF
    h = (seed * 747796405 + step * 2891336453 + 1) & mask
    h = (((h >> ((h >> 28) + 4)) ^ h) * 277803737) & mask
    h = (h >> 22) ^ h
    return (h >> 8) / (1 << 24)


def sample_oracle(logits: np.ndarray, temperature: float, top_k: int, top_p: float, seed: int, step: int) -> int:
    """sampling.py's algorithm in numpy: the thresholds by the same 30 bisection steps."""
    probs = np.exp((logits.astype(np.float64) - max(logits.max(), -3.4e38)) / temperature)
    n = probs.size

    def bisect(low: float, goal: float, mass: bool) -> float:
        high = 1.0
        for _ in range(30):
            mid = np.float32((low + high) * 0.5)
            kept = probs >= mid
            low, high = (mid, high) if (probs[kept].sum() if mass else kept.sum()) >= goal else (low, mid)
        return low

    cut = bisect(0.0, top_k, False) if 0 < top_k < n else 0.0
    goal = probs[probs >= cut].sum() * top_p
    if top_p < 1:
        cut = bisect(cut, goal, True)
    kept = np.where(probs >= cut, probs, 0)
    cdf = np.cumsum(kept)
    return int(np.flatnonzero((cdf > uniform(seed, step) * cdf[-1]) & (kept > 0))[0])


class Sampler:
    def __init__(self, level: str, logits) -> None:
        self.k = kernels(level)
        self.n = len(logits)
        self.logits, self.probs, self.out = self.k.put(f32(logits)), self.k.alloc(4 * self.n), self.k.alloc(4)

    def __call__(self, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 1, step: int = 0) -> int:
        self.k.call("cpu_sample", self.logits, self.probs, self.out, self.n, temperature, top_k, top_p, seed, step)
        return int(self.k.get(self.out, np.int32, 1)[0])


@pytest.mark.parametrize("level", LEVELS)
def test_sample_matches_model(level):
    logits = f32(np.random.default_rng(5).standard_normal(1000) * 3)  # fixed: the draws are compared exactly
    draw = Sampler(level, logits)
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 40, 1.0), (1.0, 0, 0.9), (1.3, 50, 0.8), (0.5, 1000, 0.5)]:
        for step in range(25):
            got = draw(temperature, top_k, top_p, 7, step)
            assert got == sample_oracle(logits, temperature, top_k, top_p, 7, step), (temperature, top_k, top_p, step)


@pytest.mark.parametrize("level", LEVELS)
def test_sample_repeats_and_greedy_limits(level):
    logits = f32(rng.standard_normal(49153) * 2)
    draw = Sampler(level, logits)
    run = [draw(seed=99, step=s) for s in range(8)]
    assert run == [draw(seed=99, step=s) for s in range(8)]
    assert len(set(run)) > 1 and run != [draw(seed=100, step=s) for s in range(8)]
    best = int(np.argmax(logits))
    assert all(draw(top_k=1, seed=3, step=s) == best for s in range(5))
    assert all(draw(top_p=1e-6, seed=3, step=s) == best for s in range(5))


def chi_square(draws: list[int], p: np.ndarray) -> float:
    counts = np.bincount(draws, minlength=p.size)
    expected = p * len(draws)
    assert counts[expected == 0].sum() == 0  # never a token the filters removed
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


# chi-square bounds at p = 0.001 for 1-3 degrees of freedom
CHI2 = {1: 10.83, 2: 13.82, 3: 16.27}


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (2.0, 3, 1.0), (1.0, 0, 0.8)])
def test_sample_distribution(level, temperature, top_k, top_p):
    """2000 draws over 4 tokens follow softmax(logits / temperature), cut by top-k / top-p."""
    logits = f32([1.0, 0.2, -0.5, 0.7])
    draw = Sampler(level, logits)
    p = reference.softmax(logits.astype(np.float64) / temperature)
    order = np.argsort(-p)
    cut = np.zeros(4, bool)
    if top_k:
        cut[order[top_k:]] = True
    cut[order[np.searchsorted(np.cumsum(p[order]), top_p) + 1:]] = True  # the fewest tokens with top_p of the mass
    p = np.where(cut, 0, p) / np.where(cut, 0, p).sum()
    draws = [draw(temperature, top_k, top_p, seed=2024, step=s) for s in range(2000)]
    assert chi_square(draws, p) < CHI2[int((p > 0).sum()) - 1]


# --- nll -----------------------------------------------------------------------------------------

def run_nll(level: str, logits: np.ndarray, targets: list[int]) -> np.ndarray:
    k = kernels(level)
    m, n = logits.shape
    out = k.alloc(4 * m)
    k.call("cpu_nll", k.put(f32(logits)), k.put(i32(targets)), out, m, n)
    return k.get(out, np.float32, m)


def nll_oracle(logits: np.ndarray, targets: list[int]) -> np.ndarray:
    x = logits.astype(np.float64)
    mx = x.max(axis=1)
    lse = np.log(np.exp(x - mx[:, None]).sum(axis=1)) + mx
    return lse - x[np.arange(len(x)), np.clip(targets, 0, x.shape[1] - 1)]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("m,n", [(1, 1), (3, 7), (4, 49152), (2, 1001)])
def test_nll(level, m, n):
    logits = f32(rng.standard_normal((m, n)) * 4)
    targets = [int(t) for t in rng.integers(-2, n + 2, m)]  # out-of-range targets clamp
    np.testing.assert_allclose(run_nll(level, logits, targets), nll_oracle(logits, targets), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("level", LEVELS)
def test_nll_log_extremes(level):
    """The log over sums from 1 to 2^16 and logits from -inf to 1e30: finite, within an ulp or so."""
    inf = np.inf
    rows = [np.zeros(65536), np.full(65536, -1e30), np.r_[1e30, -1e30, -inf, 0.0, np.zeros(60)],
            np.r_[-inf, 5.0, -inf, -inf, -inf], np.r_[88.0, 88.0, -88.0, 0, 0, 0, 0, 0],
            np.r_[np.zeros(3), -100 * np.ones(5)]]
    for logits in rows:
        logits = f32(logits)[None]
        got = run_nll(level, logits, [1])
        want = nll_oracle(logits, [1])
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    sums = np.unique(np.geomspace(1, 65536, 40).astype(int))
    for s in sums:  # log(s) exactly as logsumexp of s zeros
        got = run_nll(level, np.zeros((1, s), np.float32), [0])
        assert abs(got[0] - math.log(s)) <= 1.5 * np.spacing(np.float32(math.log(s))), s

"""Quantisation: exact packing round trips, GPTQ beats RTN, mixed precision keeps its budget,
lossless requantisation of the shipped Q4_1 weights, and clear errors for bad requests."""

from __future__ import annotations

import numpy as np
import pytest

from lutlm.intake import load_checkpoint
from lutlm.errors import LutlmError
from lutlm.intake import quantized as stored
from lutlm.quant.format import QuantSpec, grid_params, quantize_rtn, quantize_to_grid, search_grid
from lutlm.quant.gptq import GPTQOptions, Hessian, gptq_quantize
from lutlm.quant.mixed import Sensitivity, allocate
from lutlm.quant.packing import (pack_bitplanes, pack_dense, pack_f16_pairs, unpack_bitplanes, unpack_dense,
                                 unpack_f16_pairs)
from lutlm.quant.pipeline import Request, bits_per_weight, calibration_windows, quantize
from lutlm.quant.tune import TuneOptions

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
def test_bitplane_round_trip(bits):
    codes = RNG.integers(0, 1 << bits, size=(5, 96), dtype=np.uint8)
    planes = pack_bitplanes(codes, bits)
    assert planes.shape == (bits, 5, 3) and planes.dtype == np.uint32
    np.testing.assert_array_equal(unpack_bitplanes(planes), codes)
    # plane j, word 0 of row 0 holds bit j of weights 0..31, weight k at bit k
    assert all(int(planes[j, 0, 0]) >> k & 1 == codes[0, k] >> j & 1 for j in range(bits) for k in range(32))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_dense_round_trip(bits):
    codes = RNG.integers(0, 1 << bits, size=(4, 100), dtype=np.uint8)
    words = pack_dense(codes, bits)
    np.testing.assert_array_equal(unpack_dense(words, bits, 100), codes)
    if bits == 4:  # q4f16_1 order: code i of a word in bits 4i..4i+3
        assert int(words[0, 0]) & 0xF == codes[0, 0] and int(words[0, 0]) >> 28 == codes[0, 7]


def test_f16_pair_round_trip():
    lo, hi = RNG.normal(size=10).astype(np.float16), RNG.normal(size=10).astype(np.float16)
    a, b = unpack_f16_pairs(pack_f16_pairs(lo, hi))
    np.testing.assert_array_equal(a, lo)
    np.testing.assert_array_equal(b, hi)


@pytest.mark.parametrize("bits", ["4", "3", "2", "t"])
def test_codes_stay_in_range_and_dequantise_near(bits):
    spec = QuantSpec.parse(bits, 32)
    w = RNG.normal(size=(16, 128)).astype(np.float32)
    q = quantize_rtn(w, spec)
    assert q.codes.max() <= spec.qmax
    if spec.ternary:
        assert set(np.unique(q.codes)) <= {0, 1, 2}
        np.testing.assert_array_equal(q.minimum, -q.scale)
    else:  # min-max grid: the error is at most half a step
        step = q.scale.astype(np.float32).repeat(32, axis=1)
        assert np.all(np.abs(q.dequantize() - w) <= step / 2 + 1e-3)


@pytest.mark.parametrize("bits", ["4", "3", "2", "t"])
def test_grid_search_never_loses_to_min_max(bits):
    spec = QuantSpec.parse(bits, 32)
    w = (RNG.standard_t(3, size=(64, 32)) * 0.1).astype(np.float32)
    importance = RNG.uniform(0.1, 10, size=32).astype(np.float32)

    def error(params):
        scale, minimum = params
        q = quantize_to_grid(w, scale[:, None], minimum[:, None], spec.qmax)
        deq = q * scale.astype(np.float32)[:, None] + minimum.astype(np.float32)[:, None]
        return (importance * (deq - w) ** 2).sum(axis=1)

    searched, plain = error(search_grid(w, spec, importance)), error(grid_params(w, spec))
    assert np.all(searched <= plain * (1 + 1e-5))
    assert searched.sum() < 0.9 * plain.sum()


def test_symmetric_8bit_requantises_q8_0_exactly():
    import gguf

    w = RNG.normal(size=(8, 64)).astype(np.float32)
    q8 = gguf.dequantize(gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(quantize_rtn(q8, QuantSpec(8, 32, symmetric=True)).dequantize(), q8)


def _layer(k=256, n=64, tokens=2048):
    mix = RNG.normal(size=(k, k)) / np.sqrt(k)
    x = RNG.normal(size=(tokens, k)) @ mix
    x[:, :4] *= 8  # outlier channels, as real activations have
    w = (RNG.normal(size=(n, k)) * 0.05).astype(np.float32)
    h = Hessian(k)
    h.add(x)
    return w, x, h.matrix()


@pytest.mark.slow
@pytest.mark.parametrize("bits", ["4", "3", "2", "t"])
@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_reduces_output_error_versus_rtn(bits, act_order):
    w, x, h = _layer()
    spec = QuantSpec.parse(bits, 32)
    err = lambda q: float(np.mean(((q.dequantize() - w) @ x.T) ** 2))  # noqa: E731
    gptq = gptq_quantize(w, h, spec, GPTQOptions(act_order=act_order))
    assert gptq.codes.max() <= spec.qmax
    assert err(gptq) < 0.8 * err(quantize_rtn(w, spec))


def test_mixed_allocation_respects_the_budget_and_follows_sensitivity():
    specs = [QuantSpec(b, g) for b in (2, 3, 4) for g in (32, 64)]
    sens = [Sensitivity(f"t{i}", size, {s: (10.0 if i == 0 else 1.0) * 2.0 ** (-2 * s.bpw) for s in specs}, 64)
            for i, size in enumerate([1000, 1000, 3000, 500])]
    for budget in (2.5, 3.0, 3.7):
        plan = allocate(sens, budget)
        total = sum(s.size for s in sens)
        spent = sum(plan[s.name].bpw * s.size for s in sens) / total
        assert spent <= budget + 1e-9
        assert plan["t0"].bpw >= max(plan[s.name].bpw for s in sens[1:])  # the sensitive tensor gets most
    with pytest.raises(LutlmError, match="below the cheapest"):
        allocate(sens, 2.0)


def test_mixed_allocation_counts_the_row_steps_of_8_bit_scales():
    """With 64 columns the row steps add 0.5 bits: q2g64d8 costs 2.75, q2g32d8 3.0, so a budget of
    2.8 affords no upgrade, though the nominal 2.25 and 2.5 would upgrade every tensor."""
    cheap, dear = QuantSpec(2, 64, scale_bits=8), QuantSpec(2, 32, scale_bits=8)
    sens = [Sensitivity(f"t{i}", 64 * 64, {cheap: 2.0, dear: 1.0}, cols=64) for i in range(4)]
    plan = allocate(sens, 2.8)
    assert cheap.bpw_for(64) == 2.75 and dear.bpw_for(64) == 3.0
    assert sum(s == dear for s in plan.values()) == 0
    assert sum(s == dear for s in allocate(sens, 2.75 + 0.25 / 4).values()) == 1


@pytest.mark.parametrize("kwargs, message", [
    ({"bits": "5"}, "bits must be"),
    ({"bits": "x"}, "bits must be"),
    ({"bits": "3", "group": 48}, "group size must be"),
    ({"bits": "mixed"}, "needs --budget"),
    ({"bits": "3", "budget": 2.5}, "mixed only"),
    ({"bits": "3", "method": "awq"}, "method must be"),
    ({"bits": "3", "embed_bits": 2}, "embed-bits"),
    ({"bits": "3", "tune": TuneOptions(epochs=0)}, "at least 1 epoch"),
    ({"bits": "3", "tune": TuneOptions(lr=-1.0)}, "positive learning rate"),
    ({"bits": "3", "tune": TuneOptions(top_k=0)}, "top k"),
    ({"bits": "3", "scale_bits": 7}, "scale bits must be"),
    ({"bits": "t", "scale_bits": 8}, "asymmetric groups"),
    ({"bits": "mixed", "budget": 3.0, "scale_bits": 7}, "scale bits must be"),
    ({"bits": "mixed", "budget": -1.0}, "positive number of bits"),
    ({"bits": "mixed", "budget": float("nan")}, "positive number of bits"),
    ({"bits": "3", "gptq": GPTQOptions(damp=-0.01)}, "--damp must be"),
    ({"bits": "3", "tune": TuneOptions(lr=float("nan"))}, "positive learning rate"),
])
def test_bad_requests(kwargs, message):
    with pytest.raises(LutlmError, match=message):
        Request(**kwargs).validate()


@pytest.mark.model
def test_group_must_divide_the_dimension(checkpoint):
    with pytest.raises(LutlmError, match="multiple of the group size 128"):
        quantize(checkpoint, Request(bits="3", group=128, method="rtn"), None)


@pytest.mark.model
def test_unaffordable_budget_fails_before_measuring(checkpoint, monkeypatch):
    """Measuring sensitivity takes minutes on a real model: a budget below the cheapest mix must stop first."""
    import lutlm.quant.pipeline as pipeline

    def measure(*args, **kwargs):
        raise AssertionError("sensitivity measured for a budget that cannot be met")

    monkeypatch.setattr(pipeline, "measure", measure)
    with pytest.raises(LutlmError, match=r"below the cheapest mix \(2\.\d+\)"):
        quantize(checkpoint, Request(bits="mixed", budget=2.0, method="rtn"), [[1, 2, 3, 4]])


def test_empty_calibration_text():
    with pytest.raises(LutlmError, match="has 0 tokens"):
        calibration_windows({"empty": ""}, lambda text: [], 4, 512)


@pytest.mark.model
@pytest.mark.parametrize("spec", [QuantSpec(3, 32), QuantSpec(3, 16, scale_bits=8)])
def test_store_round_trip_of_gptq_codes(tmp_path, checkpoint, spec):
    """GPTQ's act-order leaves codes in a permuted memory layout; the file must still hold them right,
    and 8-bit scales must come back as the same values."""
    w, x, h = _layer(k=576, n=64)
    q = gptq_quantize(w, h, spec)
    assert not q.codes.flags["C_CONTIGUOUS"]
    planes = pack_bitplanes(q.codes, 3)
    assert planes.flags["C_CONTIGUOUS"]
    name = "blk.0.attn_q.weight"
    small = type(checkpoint)(checkpoint.config, {name: w}, checkpoint.tokenizer)
    stored.write(tmp_path / "q", small, {name: q}, {})
    _, back = stored.read(tmp_path / "q")
    np.testing.assert_array_equal(back[name].codes, q.codes)
    np.testing.assert_array_equal(back[name].dequantize(), q.dequantize())
    assert back[name].spec == spec


def test_8bit_scales_stay_on_their_row_grid_and_cost_little():
    """Scales and minimums are 8-bit codes times an f16 step per row (minimums at most 0), and GPTQ
    with them loses little to f16 scales in the same groups and still beats RTN."""
    w, x, h = _layer()
    err = lambda q: float(np.mean(((q.dequantize() - w) @ x.T) ** 2))  # noqa: E731
    d8 = gptq_quantize(w, h, QuantSpec(3, 16, scale_bits=8))
    assert d8.steps.shape == (64, 2) and d8.steps.dtype == np.float16
    steps = d8.steps.astype(np.float32)
    for values, step in ((d8.scale, steps[:, :1]), (-d8.minimum, steps[:, 1:])):
        codes = values / step
        np.testing.assert_array_equal(codes, np.clip(np.rint(codes), 0, 255))
    assert err(d8) < 1.1 * err(gptq_quantize(w, h, QuantSpec(3, 16)))
    assert err(d8) < 0.8 * err(quantize_rtn(w, QuantSpec(3, 16, scale_bits=8)))
    assert QuantSpec(3, 16, scale_bits=8).bpw_for(576) == pytest.approx(3 + 16 / 16 + 32 / 576)
    assert QuantSpec(3, 16, scale_bits=8).name == "q3g16d8"


@pytest.mark.model
@pytest.mark.slow
def test_compile_refuses_formats_the_kernels_cannot_read(checkpoint):
    from lutlm.package import gpu_tensors

    quantized, _, _ = quantize(checkpoint, Request(bits="3", group=16, method="rtn"), None)
    with pytest.raises(LutlmError, match="not q3g16;"):
        gpu_tensors(checkpoint, quantized)
    quantized, _, _ = quantize(checkpoint, Request(bits="3", group=16, scale_bits=8, method="rtn"), None)
    with pytest.raises(LutlmError, match="dequantise baseline"):
        gpu_tensors(checkpoint, quantized, decode="dequant")


@pytest.mark.model
@pytest.mark.slow
def test_q4_1_requantisation_is_lossless(checkpoint, tmp_path):
    quantized, _, info = quantize(checkpoint, Request(bits="4", group=32, method="rtn"), None)
    assert info["bpw_linear"] == 5.0
    stored.write(tmp_path / "q4", checkpoint, quantized, info)
    again = load_checkpoint(tmp_path / "q4")
    for name, value in checkpoint.tensors.items():
        np.testing.assert_array_equal(again.tensors[name], value, err_msg=name)
    assert again.tensor_types["blk.0.attn_q.weight"] == "q4g32"
    assert again.tensor_types["token_embd.weight"] == "s8g32"


@pytest.mark.model
def test_bits_per_weight_counts_scales_and_minimums(checkpoint):
    names = [n for n in checkpoint.tensors if ".attn_q." in n or ".ffn_down." in n]
    plan = {n: QuantSpec(3, 64) if "attn_q" in n else QuantSpec(2, 32) for n in names}
    q_size = checkpoint.tensors["blk.0.attn_q.weight"].size
    d_size = checkpoint.tensors["blk.0.ffn_down.weight"].size
    expected = (3.5 * q_size + 3.0 * d_size) / (q_size + d_size)
    assert bits_per_weight(plan, checkpoint) == pytest.approx(expected)
    assert QuantSpec.parse("t", 64).bpw == 2.25


@pytest.mark.model
@pytest.mark.slow
def test_damaged_quantised_checkpoint(checkpoint, tmp_path):
    quantized, _, info = quantize(checkpoint, Request(bits="2", group=64, method="rtn"), None)
    stored.write(tmp_path / "q", checkpoint, quantized, info)
    manifest = (tmp_path / "q" / "quantized.json")
    manifest.write_text(manifest.read_text().replace('"version": 1', '"version": 99'))
    with pytest.raises(LutlmError, match="version 99"):
        load_checkpoint(tmp_path / "q")
    weights = tmp_path / "q" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    manifest.write_text(manifest.read_text().replace('"version": 99', '"version": 1'))
    with pytest.raises(LutlmError, match="unreadable"):
        load_checkpoint(tmp_path / "q")

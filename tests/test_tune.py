"""End-to-end tuning of scales and minimums: its hand-written backward pass against finite
differences, and tuning that brings a quantised model's outputs closer to its source's on text it
was not tuned on, with the codes left as they were."""

from __future__ import annotations

import numpy as np
import pytest

from lutlm.checkpoint import Checkpoint, ModelConfig
from lutlm.errors import LutlmError
from lutlm.quant.format import QuantSpec, quantize_rtn
from lutlm.quant.tune import Teacher, TuneOptions, _Group, _kl, loss_and_grads, teacher_probs, tune
from lutlm.reference import Reference, softmax

D, F, V, KV = 64, 96, 50, 32
CONFIG = ModelConfig("llama", 2, D, 4, 2, 16, F, V, 128, 10000.0, 16, 1e-5, True, 1, 2, False)


def _model(dtype=np.float32, seed: int = 0) -> Reference:
    rng = np.random.default_rng(seed)
    w = {"token_embd.weight": rng.normal(0, 0.5, (V, D)), "output_norm.weight": 1 + rng.normal(0, 0.1, D)}
    for i in range(CONFIG.n_layer):
        p = f"blk.{i}."
        w |= {p + "attn_norm.weight": 1 + rng.normal(0, 0.1, D), p + "ffn_norm.weight": 1 + rng.normal(0, 0.1, D),
              p + "attn_q.weight": rng.normal(0, 0.2, (D, D)), p + "attn_k.weight": rng.normal(0, 0.2, (KV, D)),
              p + "attn_v.weight": rng.normal(0, 0.2, (KV, D)), p + "attn_output.weight": rng.normal(0, 0.2, (D, D)),
              p + "ffn_gate.weight": rng.normal(0, 0.2, (F, D)), p + "ffn_up.weight": rng.normal(0, 0.2, (F, D)),
              p + "ffn_down.weight": rng.normal(0, 0.2, (D, F))}
    return Reference(Checkpoint(CONFIG, {k: x.astype(dtype) for k, x in w.items()}, {}))


@pytest.mark.parametrize("top_k", [V, 7])
def test_backward_matches_finite_differences(top_k):
    model = _model(np.float64)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, 12)
    probs = rng.random((12, V)) ** 4
    probs /= probs.sum(1, keepdims=True)
    top = np.argsort(-probs, axis=1)[:, :top_k]
    teacher = Teacher(top, np.take_along_axis(probs, top, 1))
    names = [n for n in model.w if n != "token_embd.weight"]  # linear layers and norm gains
    _, grads = loss_and_grads(model, ids, teacher, names)
    assert set(grads) == set(names)
    for name in names:
        for _ in range(3):
            idx = tuple(int(rng.integers(0, s)) for s in model.w[name].shape)
            old, eps = model.w[name][idx], 1e-5
            model.w[name][idx] = old + eps
            up, _ = loss_and_grads(model, ids, teacher, [])
            model.w[name][idx] = old - eps
            down, _ = loss_and_grads(model, ids, teacher, [])
            model.w[name][idx] = old
            assert grads[name][idx] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-9), name


def test_top_k_teacher_keeps_the_rest_as_one_outcome():
    """With the whole vocabulary the loss is the KL divergence itself; with the top k it is the KL
    between the two distributions over those k tokens and one 'anything else'."""
    source, student = _model(seed=0), _model(seed=1)
    ids = np.random.default_rng(4).integers(0, V, 16)
    t = softmax(source.forward(ids, source.new_cache(16), all_logits=True).astype(np.float64))
    p = softmax(student.forward(ids, student.new_cache(16), all_logits=True).astype(np.float64))
    full, = teacher_probs(source, [list(ids)], top_k=V + 10)
    assert full.ids.shape == (16, V)
    assert loss_and_grads(student, ids, full, [])[0] == pytest.approx((t * np.log(t / p)).sum(1).mean(), rel=1e-4)
    top, = teacher_probs(source, [list(ids)], top_k=5)
    np.testing.assert_array_equal(np.sort(top.ids, 1), np.sort(np.argsort(-t, 1)[:, :5], 1))
    rows = np.arange(16)[:, None]
    tt, pt = t[rows, top.ids], p[rows, top.ids]
    tail_t, tail_p = 1 - tt.sum(1), 1 - pt.sum(1)
    want = (tt * np.log(tt / pt)).sum(1) + tail_t * np.log(tail_t / tail_p)
    assert loss_and_grads(student, ids, top, [])[0] == pytest.approx(want.mean(), rel=1e-4)


def test_top_k_loss_stays_bounded_when_the_model_is_sure():
    """A model that puts all but 1e-16 of its mass on one token, against a teacher that leaves 10%
    outside its top 2: 1 - sum(top) rounds to 0 in float32, and the tail's gradient must not blow up."""
    logits = np.full((3, V), -40.0, np.float32)
    logits[:, 0] = 0.0
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    teacher = Teacher(np.tile([0, 1], (3, 1)), np.tile([0.8, 0.1], (3, 1)).astype(np.float32))
    loss, grad = _kl(logp, teacher)
    assert loss == pytest.approx(0.8 * np.log(0.8) + 0.1 * (np.log(0.1) + 40) + 0.1 * (np.log(0.1 / 48) + 40), rel=1e-5)
    assert np.abs(grad).max() <= 1.0
    np.testing.assert_allclose(grad.sum(-1), 0.0, atol=1e-6)  # the probabilities' gradients balance


@pytest.mark.parametrize("spec", [QuantSpec(3, 32), QuantSpec(2, 32, ternary=True), QuantSpec(8, 32, symmetric=True),
                                  QuantSpec(3, 16, scale_bits=8)])
def test_untrained_groups_rebuild_the_stored_weight(spec):
    w = np.random.default_rng(2).normal(0, 0.2, (8, 64)).astype(np.float32)
    q = quantize_rtn(w, spec)
    group = _Group(q)
    np.testing.assert_array_equal(group.weight(), q.dequantize())
    back = group.qtensor()
    np.testing.assert_array_equal(back.codes, q.codes)
    np.testing.assert_array_equal(back.scale, q.scale)
    np.testing.assert_array_equal(back.minimum, q.minimum)


@pytest.mark.parametrize("spec,norms", [(QuantSpec(3, 32), False), (QuantSpec(3, 16, scale_bits=8), False),
                                        (QuantSpec(3, 32), True)])
def test_tuning_brings_outputs_closer_to_the_source_on_unseen_text(spec, norms):
    source = _model()
    rng = np.random.default_rng(3)
    train = [list(rng.integers(0, V, 64)) for _ in range(48)]  # enough tokens not to overfit ~4 K parameters
    held_out = [list(rng.integers(0, V, 64)) for _ in range(4)]
    quantized = {n: quantize_rtn(w, spec) for n, w in source.w.items()
                 if n.startswith("blk.") and not n.endswith("norm.weight")}
    student = Reference(Checkpoint(CONFIG, dict(source.w) | {n: q.dequantize() for n, q in quantized.items()}, {}))
    source_norms = {n: w.copy() for n, w in source.w.items() if n.endswith("norm.weight")}

    def kl(windows: list[list[int]]) -> float:
        teacher = teacher_probs(source, windows)
        return float(np.mean([loss_and_grads(student, np.asarray(ids), t, [])[0] for ids, t in zip(windows, teacher)]))

    before = kl(held_out)
    tuned, gains, per_epoch = tune(student, quantized, teacher_probs(source, train), train,
                                   TuneOptions(epochs=4, lr=1e-2, norms=norms))
    after = kl(held_out)
    assert after < 0.95 * before  # measured 0.92: random text, so little to generalise from
    assert len(per_epoch) == 4 and per_epoch[-1] < per_epoch[0]
    assert set(tuned) == set(quantized)
    for name, q in tuned.items():
        np.testing.assert_array_equal(q.codes, quantized[name].codes)
        if spec.scale_bits == 16:
            assert q.scale.dtype == np.float16 and q.minimum.dtype == np.float16
        else:  # still on the tensor's 8-bit grid: whole multiples (0..255) of its row steps
            np.testing.assert_array_equal(q.steps, quantized[name].steps)
            for values, step in ((q.scale, q.steps[:, :1]), (-q.minimum, q.steps[:, 1:])):
                codes = values / step.astype(np.float32)
                np.testing.assert_array_equal(codes, np.clip(np.rint(codes), 0, 255))
        np.testing.assert_array_equal(student.w[name], q.dequantize())  # the model holds what is stored
    assert set(gains) == (set(source_norms) if norms else set())
    for name, gain in gains.items():
        assert student.w[name] is gain and gain.dtype == np.float32 and not np.array_equal(gain, source_norms[name])
    for name, before_tuning in source_norms.items():  # the source model's arrays, shared with the student, stay
        np.testing.assert_array_equal(source.w[name], before_tuning)


def test_tuning_needs_calibration():
    model = _model()
    with pytest.raises(LutlmError, match="calibration"):
        tune(model, {}, [], [])

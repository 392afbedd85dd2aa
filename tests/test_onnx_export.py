"""`lutlm export onnx`: the exported decoder, run by onnxruntime, computes the numpy reference's
logits on the same quantised weights, through a prefill and then decode steps on its KV cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine_fixtures import tiny_checkpoint
from lutlm.checkpoint import Checkpoint
from lutlm.errors import LutlmError
from lutlm.onnx_export import DTYPES, export
from lutlm.quant.format import QuantSpec, quantize_rtn
from lutlm.quant.pipeline import Request, quantize
from lutlm.reference import Reference

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("hf"))


def session(folder, dtype):
    return ort.InferenceSession(str(folder / "onnx" / DTYPES[dtype]), providers=["CPUExecutionProvider"])


def run(sess, cfg, ids, past, start):
    """One call as transformers.js makes it: new ids, mask over past + new, their positions."""
    n = len(ids)
    feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, start + n), np.int64),
             "position_ids": np.arange(start, start + n, dtype=np.int64)[None]}
    for i in range(cfg.n_layer):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{i}.{kind}"] = past.get((i, kind), np.zeros((1, cfg.n_head_kv, 0, cfg.head_dim), np.float32))
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, feeds)))
    for i in range(cfg.n_layer):
        for kind in ("key", "value"):
            past[(i, kind)] = out[f"present.{i}.{kind}"]
    return out["logits"][0]


@pytest.mark.parametrize("bits,dtype", [("4", "q4"), ("3", "q4"), ("t", "q4"), ("2", "fp32")])
def test_exported_decoder_matches_reference(ckpt, tmp_path, bits, dtype):
    quantized, _, _ = quantize(ckpt, Request(bits=bits, method="rtn"), None)
    out = export(tmp_path / "onnx-model", ckpt, quantized, dtype)
    ref = Reference(Checkpoint(ckpt.config, dict(ckpt.tensors) | {n: q.dequantize() for n, q in quantized.items()},
                               ckpt.tokenizer))
    prompt, more = [5, 17, 42, 7, 99, 3], [11, 250, 64]
    cache = ref.new_cache(32)
    expected = [ref.forward(prompt, cache, all_logits=True)] + [ref.forward([t], cache, all_logits=True) for t in more]
    sess, past = session(out, dtype), {}
    got = [run(sess, ckpt.config, prompt, past, 0)]
    got += [run(sess, ckpt.config, [t], past, len(prompt) + j) for j, t in enumerate(more)]
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=2e-4 * np.abs(e).max(), rtol=0)
    assert past[(0, "key")].shape == (1, ckpt.config.n_head_kv, len(prompt) + len(more), ckpt.config.head_dim)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_key_value_heads"] == ckpt.config.n_head_kv and cfg["transformers.js_config"]["dtype"] == dtype
    assert json.loads((out / "tokenizer.json").read_text()) == ckpt.tokenizer


def test_padding_mask_hides_keys(ckpt, tmp_path):
    """A left-padded row gives the same logits as the unpadded one (attention_mask is honoured)."""
    quantized, _, _ = quantize(ckpt, Request(bits="4", method="rtn"), None)
    sess = session(export(tmp_path / "m", ckpt, quantized, "q4"), "q4")
    c = ckpt.config
    empty = {f"past_key_values.{i}.{k}": np.zeros((1, c.n_head_kv, 0, c.head_dim), np.float32)
             for i in range(c.n_layer) for k in ("key", "value")}
    plain = sess.run(["logits"], {"input_ids": np.array([[5, 6, 7]]), "attention_mask": np.ones((1, 3), np.int64),
                                  "position_ids": np.array([[0, 1, 2]])} | empty)[0]
    padded = sess.run(["logits"], {"input_ids": np.array([[0, 0, 5, 6, 7]]),
                                   "attention_mask": np.array([[0, 0, 1, 1, 1]]),
                                   "position_ids": np.array([[0, 0, 0, 1, 2]])} | empty)[0]
    np.testing.assert_allclose(padded[0, 2:], plain[0], atol=1e-4 * np.abs(plain).max(), rtol=0)


def test_export_refusals(ckpt, tmp_path):
    quantized, _, _ = quantize(ckpt, Request(bits="4", method="rtn"), None)
    with pytest.raises(LutlmError, match="--dtype"):
        export(tmp_path / "a", ckpt, quantized, "int8")
    name = "blk.0.ffn_up.weight"
    eight = quantized | {name: quantize_rtn(ckpt.tensors[name], QuantSpec(8, 32), name)}
    with pytest.raises(LutlmError, match="--dtype fp32"):
        export(tmp_path / "b", ckpt, eight, "q4")
    assert not (tmp_path / "b").exists()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(LutlmError, match="refusing"):
        export(tmp_path / "notes", ckpt, quantized, "q4")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"

"""Model intake: the real GGUF, tiny Hugging Face folders the tests write, and damaged input."""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest

from lutlm.intake import load_checkpoint
from lutlm.errors import LutlmError
from lutlm.reference import Reference
from runtime_py import Tokenizer
from tiny_llama import CONFIG, hf_forward, write_gguf, write_hf_folder

PROMPT = [5, 17, 99, 3, 250, 42, 7, 8, 120]


@pytest.mark.model
def test_smollm2_gguf_config(checkpoint):
    c = checkpoint.config
    assert (c.architecture, c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.n_vocab) == (
        "llama", 30, 576, 9, 3, 64, 1536, 49152)
    assert (c.rope_theta, c.n_ctx, c.tied_embeddings, c.bos_id, c.eos_id) == (100000.0, 8192, True, 1, 2)
    assert c.rms_eps == pytest.approx(1e-5)
    assert checkpoint.tensors["blk.0.attn_k.weight"].shape == (192, 576)
    assert checkpoint.tensors["token_embd.weight"].dtype == np.float32
    assert checkpoint.tensor_types["token_embd.weight"] == "Q8_0"
    assert checkpoint.tensor_types["blk.7.ffn_down.weight"] == "Q4_1"
    assert "<|im_start|>" in checkpoint.chat_template


@pytest.mark.model
@pytest.mark.slow
def test_gguf_dequantisation_matches_the_gguf_package(model_path, checkpoint):
    reader = gguf.GGUFReader(model_path)
    for t in reader.tensors[:6]:
        expected = gguf.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(checkpoint.tensors[t.name], expected.reshape(checkpoint.tensors[t.name].shape))


@pytest.mark.parametrize("bf16", [False, True])
def test_hf_folder_matches_transformers_style_forward(tmp_path, bf16):
    weights = write_hf_folder(tmp_path / "hf", bf16=bf16)
    ckpt = load_checkpoint(tmp_path / "hf")
    model = Reference(ckpt)
    ours = model.forward(PROMPT, model.new_cache(32), all_logits=True)
    np.testing.assert_allclose(ours, hf_forward(weights, CONFIG, PROMPT), rtol=1e-4, atol=1e-4)
    assert ckpt.tensor_types["blk.1.attn_q.weight"] == ("BF16" if bf16 else "F32")


def test_hf_untied_output_head(tmp_path):
    cfg = {**CONFIG, "tie_word_embeddings": False}
    weights = write_hf_folder(tmp_path / "hf", cfg=cfg, seed=3)
    ckpt = load_checkpoint(tmp_path / "hf")
    assert not ckpt.config.tied_embeddings
    model = Reference(ckpt)
    ours = model.forward(PROMPT, model.new_cache(32), all_logits=True)
    np.testing.assert_allclose(ours, hf_forward(weights, cfg, PROMPT), rtol=1e-4, atol=1e-4)


def test_hf_and_gguf_of_the_same_model_agree(tmp_path):
    write_hf_folder(tmp_path / "hf")
    hf = load_checkpoint(tmp_path / "hf")
    tok_json = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
    weights = write_hf_folder(tmp_path / "hf2")  # same seed: same weights
    write_gguf(tmp_path / "tiny.gguf", weights, CONFIG, tok_json)
    gg = load_checkpoint(tmp_path / "tiny.gguf")
    for name, value in hf.tensors.items():
        np.testing.assert_array_equal(gg.tensors[name], value, err_msg=name)
    text = "The quick brown fox, 2024!"
    assert Tokenizer(gg.tokenizer).encode(text) == Tokenizer(hf.tokenizer).encode(text)
    from tokenizers import Tokenizer as HFTokenizer

    hf_oracle = HFTokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    assert Tokenizer(hf.tokenizer).encode(text) == hf_oracle.encode(text).ids


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16,
                                   gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0,
                                   gguf.GGMLQuantizationType.Q4_1, gguf.GGMLQuantizationType.Q5_0,
                                   gguf.GGMLQuantizationType.Q5_1])
def test_gguf_block_types_are_dequantised(tmp_path, qtype):
    weights = write_hf_folder(tmp_path / "hf")
    tok_json = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
    write_gguf(tmp_path / "q.gguf", weights, CONFIG, tok_json, qtype=qtype)
    ckpt = load_checkpoint(tmp_path / "q.gguf")
    assert ckpt.tensor_types["blk.0.ffn_up.weight"] == qtype.name
    up = ckpt.tensors["blk.0.ffn_up.weight"]
    original = weights["model.layers.0.mlp.up_proj.weight"]
    expected = gguf.dequantize(gguf.quants.quantize(original, qtype), qtype)
    np.testing.assert_array_equal(up, expected)
    assert np.abs(up - original).max() < 0.25 * np.abs(original).max()


def test_missing_file():
    with pytest.raises(LutlmError, match="no such file"):
        load_checkpoint("/nonexistent/model.gguf")


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "notes.gguf"
    bad.write_text("hello, I am text")
    with pytest.raises(LutlmError, match="not a GGUF file"):
        load_checkpoint(bad)


@pytest.mark.model
@pytest.mark.parametrize("keep", [3, 24, 4000, 50_000_000])
def test_truncated_gguf(tmp_path, model_path, keep):
    cut = tmp_path / "cut.gguf"
    with open(model_path, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(keep))
    with pytest.raises(LutlmError, match="truncated|not a GGUF"):
        load_checkpoint(cut)


def test_unsupported_architecture(tmp_path):
    weights = write_hf_folder(tmp_path / "hf")
    tok_json = json.loads((tmp_path / "hf" / "tokenizer.json").read_text())
    write_gguf(tmp_path / "m.gguf", weights, CONFIG, tok_json, arch="mamba")
    with pytest.raises(LutlmError, match="unsupported architecture 'mamba'"):
        load_checkpoint(tmp_path / "m.gguf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    with pytest.raises(LutlmError, match="unsupported architecture 'gpt_neox'"):
        load_checkpoint(tmp_path / "hf")


def test_hf_folder_damage(tmp_path):
    write_hf_folder(tmp_path / "hf")
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "hf", broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LutlmError, match="truncated"):
        load_checkpoint(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(LutlmError, match="no \\*.safetensors"):
        load_checkpoint(broken)
    (tmp_path / "hf" / "config.json").unlink()
    with pytest.raises(LutlmError, match="config.json is missing"):
        load_checkpoint(tmp_path / "hf")

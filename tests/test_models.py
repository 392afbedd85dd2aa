"""The model definition (lutlm.models) against what real files hold: the names and shapes of
SmolLM2's GGUF, and llama.cpp's naming of a Hugging Face folder as tiny_llama.py's independent
converter spells it."""

from __future__ import annotations

import json

import pytest
from gguf import GGUFReader

from lutlm.errors import LutlmError
from lutlm.intake import load_checkpoint
from lutlm.models import architecture, llama
from tiny_llama import CONFIG, write_gguf, write_hf_folder


def _gguf_shapes(path) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(int(d) for d in reversed(t.shape.tolist())) for t in GGUFReader(path).tensors}


@pytest.mark.model
def test_names_and_shapes_are_those_of_the_real_gguf(model_path):
    config = load_checkpoint(model_path, tensors=False).config
    assert llama.tensor_shapes(config) == _gguf_shapes(model_path)


@pytest.mark.parametrize("tied", [True, False])
def test_hugging_face_names_map_as_llama_cpp_converts_them(tmp_path, tied):
    cfg = {**CONFIG, "tie_word_embeddings": tied}
    weights = write_hf_folder(tmp_path / "hf", cfg=cfg)
    write_gguf(tmp_path / "m.gguf", weights, cfg, json.loads((tmp_path / "hf" / "tokenizer.json").read_text()))
    expected = _gguf_shapes(tmp_path / "m.gguf")
    assert {llama.from_hf(name): w.shape for name, w in weights.items()} == expected
    config = load_checkpoint(tmp_path / "hf", tensors=False).config
    assert llama.tensor_shapes(config) == expected
    rotate_half = {llama.from_hf(n) for n in weights if n.endswith(("q_proj.weight", "k_proj.weight"))}
    assert set(llama.hf_rotate_half(config)) == rotate_half
    assert llama.from_hf("model.layers.0.self_attn.q_proj.bias") == "blk.0.attn_q.bias"  # which intake then refuses
    assert llama.from_hf("model.layers.0.self_attn.q_norm.weight") is None


def test_every_tensor_is_an_embedding_a_norm_gain_or_a_linear_layer(tmp_path):
    for tied in (True, False):
        write_hf_folder(tmp_path / str(tied), cfg={**CONFIG, "tie_word_embeddings": tied})
        config = load_checkpoint(tmp_path / str(tied), tensors=False).config
        shapes = llama.tensor_shapes(config)
        parts = llama.embeddings(config) + llama.norm_names(config) + llama.linear_names(config)
        assert sorted(parts) == sorted(shapes)
        for i in range(config.n_layer):
            for fused, members in llama.block(i).fused.items():
                assert fused not in shapes and set(members) <= set(llama.block(i).linear)
                assert len({shapes[m][1] for m in members}) == 1  # one input: one matmul can do them all


def test_an_unknown_architecture_is_refused():
    assert architecture("llama") is llama
    with pytest.raises(LutlmError, match=r"config.json: unsupported architecture 'mamba' \(supported: llama\)"):
        architecture("mamba", "config.json")

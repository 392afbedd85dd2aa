"""scripts/quant_table.py's llama.cpp rows (only where llama-cpp-python, the optional extra, is
installed): the file llama.cpp's quantiser writes, its bits counted, read back by lutlm."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("llama_cpp")


def _quant_table():
    path = Path(__file__).resolve().parents[1] / "scripts" / "quant_table.py"
    spec = importlib.util.spec_from_file_location("quant_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_llama_cpp_q4_0_counts_its_bits_and_reads_back_as_ggml_rounds(tmp_path):
    """Q4_0 stores 32 weights in 18 bytes (4.5 bpw) on every linear tensor of a tiny model whose
    rows are multiples of 32, and lutlm reads the file back as gguf-py's Q4_0, which rounds as
    ggml's reference quantiser does."""
    import gguf
    from tiny_llama import CONFIG, write_gguf, write_hf_folder

    from lutlm.intake.gguf import load_gguf

    weights = write_hf_folder(tmp_path / "hf")
    source = tmp_path / "tiny.gguf"
    write_gguf(source, weights, CONFIG, json.loads((tmp_path / "hf" / "tokenizer.json").read_text()))
    target = tmp_path / "q4_0.gguf"
    info = _quant_table().llama_quantize(str(source), "Q4_0", target)
    assert info["types"] == {"Q4_0": 7 * CONFIG["num_hidden_layers"]}
    assert info["bpw_linear"] == 4.5
    got = load_gguf(target).tensors["blk.1.ffn_down.weight"]
    want = weights["model.layers.1.mlp.down_proj.weight"]
    ggml = gguf.quants.dequantize(gguf.quants.quantize(want, gguf.GGMLQuantizationType.Q4_0),
                                  gguf.GGMLQuantizationType.Q4_0)
    np.testing.assert_array_equal(got, ggml)
    assert not np.array_equal(got, want)


def test_rows_are_checked_before_any_runs():
    """A misspelt row or llama.cpp type stops the script at once with the names it knows."""
    check = _quant_table().check_rows
    with pytest.raises(SystemExit, match="unknown llama.cpp types: Q9 .*Q3_K_S"):
        check(["source", "llama-Q3_K_S", "llama-Q9"])
    with pytest.raises(SystemExit, match="unknown rows: gptq-9 .*llama-TYPE"):
        check(["gptq-9"])
    check(["source", "gptq-3", "llama-Q2_K"])

"""The `lutlm` command line: its output contract and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from lutlm.intake import load_checkpoint
from tiny_llama import write_hf_folder

LUTLM = [sys.executable, "-m", "lutlm.cli"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LUTLM, *args], capture_output=True, text=True, timeout=600)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("lutlm: error:") and fragment in lines[-1], proc.stderr
    assert not any(line.startswith("lutlm: error:") for line in lines[:-1])


@pytest.mark.model
def test_fetch_prints_the_path_last(model_path):
    proc = run("fetch", "smollm2-135m-instruct")
    assert proc.returncode == 0
    assert proc.stdout.strip().splitlines()[-1] == str(model_path)


@pytest.mark.model
@pytest.mark.slow
def test_tokenize_matches_the_library(model_path, tokenizer, tmp_path):
    text = "Hello <|im_start|> world 123\n"
    (tmp_path / "t.txt").write_text(text)
    plain = run("tokenize", str(model_path), str(tmp_path / "t.txt"))
    special = run("tokenize", str(model_path), str(tmp_path / "t.txt"), "--special")
    assert plain.stdout.strip() == " ".join(map(str, tokenizer.encode(text)))
    assert special.stdout.strip() == " ".join(map(str, tokenizer.encode(text, special=True)))
    assert plain.stdout != special.stdout


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "hf"
    write_hf_folder(folder)
    return folder


@pytest.mark.slow
def test_eval_ppl_last_line_on_a_text_file(tiny_hf, tmp_path):
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    proc = run("eval", "ppl", str(tiny_hf), "--text", str(tmp_path / "text.txt"), "--windows", "2", "--window", "32")
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[0] == "ppl" and float(last[1]) > 1.0
    assert "2 windows of 32" in proc.stdout
    assert "perplexity: 0 s: window 1/2, ppl " in proc.stderr  # progress reaches a log file too


@pytest.mark.slow
def test_generate_ids_are_greedy_and_deterministic(tiny_hf):
    a = run("generate", str(tiny_hf), "--prompt", "The quick", "--max-tokens", "6", "--ids")
    b = run("generate", str(tiny_hf), "--prompt", "The quick", "--max-tokens", "6", "--ids")
    assert a.returncode == 0, a.stderr
    ids = a.stdout.split()
    assert 1 <= len(ids) <= 6 and all(i.isdigit() for i in ids)
    assert a.stdout == b.stdout


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("args, fragment", [
    (("eval", "ppl", "/nonexistent.gguf"), "no such file"),
    (("tokenize", "/nonexistent.gguf", "/dev/null"), "no such file"),
    (("eval", "ppl", "smollm2-135m-instruct", "--text", "shakespeare"), "not a known text"),
    (("fetch", "gpt-5"), "unknown asset"),
    (("generate", "smollm2-135m-instruct", "--prompt", "x", "--max-tokens", "0"), "at least 1"),
])
def test_bad_input_gets_a_one_line_error(args, fragment):
    assert_one_line_error(run(*args), fragment)


@pytest.mark.model
@pytest.mark.slow
def test_bad_files_get_a_one_line_error(tmp_path, model_path, tiny_hf):
    (tmp_path / "text.gguf").write_text("not a model")
    assert_one_line_error(run("tokenize", str(tmp_path / "text.gguf"), "/dev/null"), "not a GGUF file")
    with open(model_path, "rb") as src:
        (tmp_path / "cut.gguf").write_bytes(src.read(1_000_000))
    assert_one_line_error(run("eval", "ppl", str(tmp_path / "cut.gguf"), "--text", "tiny"), "truncated")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    assert_one_line_error(run("tokenize", str(tiny_hf), str(tmp_path / "bin.txt")), "not UTF-8")
    assert_one_line_error(run("eval", "ppl", str(tiny_hf), "--text", "tiny", "--windows", "100000"), "windows")


@pytest.mark.slow
def test_quantize_then_evaluate(tiny_hf, tmp_path):
    out = tmp_path / "q2"
    proc = run("quantize", str(tiny_hf), "--bits", "2", "--method", "gptq", "--calib-windows", "4", "--window", "64",
               "--tune", "2", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    assert "3.000 bits per weight" in proc.stdout
    assert "quantize: 0 s: " in proc.stderr  # progress reaches a log file, not only a terminal
    tuned = json.loads((out / "quantized.json").read_text())["tune"]
    assert tuned["epochs"] == 2 and len(tuned["kl_per_epoch"]) == 2 and tuned["lr_schedule"].startswith("cosine")
    source = load_checkpoint(tiny_hf)
    stored = load_checkpoint(out)  # the tuned norm gains are what the checkpoint stores
    assert tuned["norms"] and all(not np.array_equal(stored.tensors[n], source.tensors[n]) for n in source.config.norm_names())
    assert run("quantize", str(tiny_hf), "--bits", "2", "--calib-windows", "4", "--window", "64", "--tune", "1",
               "--no-tune-norms", "-o", str(tmp_path / "kept")).returncode == 0
    kept = load_checkpoint(tmp_path / "kept")
    assert all(np.array_equal(kept.tensors[n], source.tensors[n]) for n in source.config.norm_names())
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    ppl = run("eval", "ppl", str(out), "--text", str(tmp_path / "text.txt"), "--windows", "2", "--window", "32")
    assert ppl.returncode == 0, ppl.stderr
    assert ppl.stdout.strip().splitlines()[-1].startswith("ppl ")


@pytest.mark.slow
def test_quantize_bad_arguments(tiny_hf, tmp_path):
    out = str(tmp_path / "q")
    assert_one_line_error(run("quantize", str(tiny_hf), "--bits", "5", "-o", out), "bits must be")
    assert_one_line_error(run("quantize", str(tiny_hf), "--bits", "3", "--group", "48", "-o", out), "group size")
    assert_one_line_error(run("quantize", str(tiny_hf), "--bits", "3", "--group", "128", "--method", "rtn", "-o", out),
                          "multiple of the group size")
    (tmp_path / "empty.txt").write_text("")
    assert_one_line_error(run("quantize", str(tiny_hf), "--bits", "3", "--calib", str(tmp_path / "empty.txt"),
                              "-o", out), "has 0 tokens")
    assert_one_line_error(run("quantize", str(tiny_hf), "--bits", "3", "-o", str(tiny_hf)), "refusing to overwrite")
    assert_one_line_error(run("quantize", str(tiny_hf), "--bits", "3", "--tune", "2", "--tune-lr", "0", "-o", out),
                          "positive learning rate")
    assert not (tmp_path / "q").exists()


@pytest.mark.gpu
@pytest.mark.slow
def test_compile_then_generate_chat_and_score(tiny_hf, tmp_path):
    """The package path of the CLI on a tiny model: compile, greedy generate (= the reference on
    the same quantised weights), perplexity through the runtime, and the chat loop."""
    pkg, q = tmp_path / "pkg", tmp_path / "q4"
    proc = run("compile", str(tiny_hf), "--bits", "4", "--method", "rtn", "-o", str(pkg))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(pkg) and (pkg / "manifest.json").is_file()
    assert run("quantize", str(tiny_hf), "--bits", "4", "--method", "rtn", "-o", str(q)).returncode == 0
    gpu = run("generate", str(pkg), "--prompt", "Hello", "--max-tokens", "12", "--ids")
    ref = run("generate", str(q), "--prompt", "Hello", "--max-tokens", "12", "--ids")
    assert gpu.returncode == 0 and ref.returncode == 0, gpu.stderr + ref.stderr
    assert gpu.stdout.split() == ref.stdout.split() and len(gpu.stdout.split()) >= 1
    (tmp_path / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    scores = [run("eval", "ppl", src, "--text", str(tmp_path / "text.txt"), "--windows", "2", "--window", "32")
              for src in (str(pkg), str(q))]
    gpu_ppl, ref_ppl = (float(p.stdout.strip().splitlines()[-1].split()[1]) for p in scores)
    assert abs(gpu_ppl / ref_ppl - 1) < 0.005
    chat = subprocess.run([*LUTLM, "chat", str(pkg), "--max-tokens", "5", "--temperature", "0"], input="Hi\n/reset\nHello\n/exit\n",
                          capture_output=True, text=True, timeout=600)
    assert chat.returncode == 0, chat.stderr
    assert chat.stderr.count("generated; first token") == 2 and "[conversation reset]" in chat.stderr


@pytest.mark.gpu
@pytest.mark.slow
def test_package_errors_are_one_line(tiny_hf, tmp_path):
    pkg = tmp_path / "pkg"
    assert run("compile", str(tiny_hf), "--bits", "2", "--method", "rtn", "-o", str(pkg)).returncode == 0
    assert_one_line_error(run("generate", str(pkg), "--prompt", "x", "--top-p", "0"), "top_p")
    assert_one_line_error(run("generate", str(pkg), "--prompt", "x " * 300, "--ctx", "64"), "context holds 64")
    assert_one_line_error(run("chat", str(tiny_hf)), "not a model package")
    assert_one_line_error(run("generate", str(tiny_hf), "--prompt", "x", "--temperature", "0.5"), "needs a model package")
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    assert_one_line_error(run("compile", str(tiny_hf), "--method", "rtn", "-o", str(tmp_path / "occupied")), "refusing")
    shard = pkg / "shards" / "000.bin"
    shard.write_bytes(shard.read_bytes()[:-4] + b"\0\0\0\0")
    assert_one_line_error(run("generate", str(pkg), "--prompt", "x"), "shards/000.bin: sha256 mismatch")

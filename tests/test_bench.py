"""`lutlm bench kernels` end to end, quick: rows for both adapters with the documented keys.

No speed is asserted here (speed belongs to the benchmark's own output); this checks that both
executors run the same workload and report it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lutlm.cli import main

KEYS = {"adapter", "where", "kernel", "bits", "ms", "weight_gbps", "ratio_to_copy", "samples"}


@pytest.mark.gpu
@pytest.mark.browser
@pytest.mark.slow
def test_bench_kernels_quick_native_and_browser(tmp_path, capsys):
    """By default every executor: WebGPU natively and in Chromium, and the CPU kernels (their own
    rows, tests/test_cpu_backend.py)."""
    out = tmp_path / "kernels.json"
    assert main(["bench", "kernels", "--quick", "--rounds", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["where"] for r in rows} == {"native", "browser", "wasm"}
    rows = [r for r in rows if r["where"] != "wasm"]
    browser = [r for r in rows if r["where"] == "browser"]
    assert "swiftshader" in browser[0]["adapter"]
    for where in ("native", "browser"):
        mine = [r for r in rows if r["where"] == where]
        assert {(r["kernel"], r["bits"]) for r in mine} >= {("copy", 4), ("dequant", 4), ("lut", 4), ("lut", 2)}
        for r in mine:
            assert KEYS <= r.keys() and r["ms"] > 0 and len(r["samples"]) == 1
    table = capsys.readouterr().out.split("\n| adapter | shape | kernel | bits")[0]  # the WebGPU table
    assert table.count("\n| ") == len(rows) and "ratio to copy" in table


def test_bench_bad_arguments(capsys):
    assert main(["bench", "kernels", "--where", "gpu"]) == 2
    assert "--where takes native, " in capsys.readouterr().err
    assert main(["bench", "kernels", "--rounds", "0"]) == 2


@pytest.mark.parametrize("sub,bad", [("model", ["--prompts", "forty"]), ("step", ["--pos", "-1"]),
                                     ("step", ["--ctx", "0"])])
def test_bench_package_bad_arguments(tmp_path, capsys, sub, bad):
    assert main(["bench", sub, str(tmp_path)]) == 2
    assert "not a model package" in capsys.readouterr().err
    (tmp_path / "manifest.json").write_text("{}")
    assert main(["bench", sub, str(tmp_path), "--where", "gpu"]) == 2
    assert "--where takes native, " in capsys.readouterr().err
    assert main(["bench", sub, str(tmp_path), *bad]) == 2
    assert bad[0] in capsys.readouterr().err
    if sub == "step":  # a manifest that is not a valid package is an error, not a traceback
        assert main(["bench", sub, str(tmp_path), "--where", "native"]) == 2
        assert "package format" in capsys.readouterr().err


def test_bench_suite_bad_arguments(capsys):
    assert main(["bench", "--variants", "q5-lut"]) == 2
    assert "--variants takes" in capsys.readouterr().err
    assert main(["bench", "--systems", "webllm"]) == 2
    assert "--systems takes" in capsys.readouterr().err
    assert main(["bench", "--source", "/nonexistent/model.gguf"]) == 2
    assert main(["bench", "--peer-budget", "0"]) == 2


def test_bench_suite_keeps_other_models_out_of_the_published_results():
    from lutlm_bench.suite import default_out

    assert default_out("smollm2-135m-instruct") == Path("results/bench")
    assert default_out("/tmp/x/tiny.gguf") == Path("results/bench-tiny")
    assert default_out("models/SmolLM2-360M") == Path("results/bench-smollm2-360m")


ROW_KEYS = {"system", "variant", "where", "load_s", "ttft_s", "prefill_tps", "decode_tps", "samples", "range"}


def _tiny_chat_gguf(tmp_path: Path) -> Path:
    """A tiny GGUF with a ChatML template, which `lutlm bench` can compile and chat with."""
    from tiny_llama import CONFIG, write_gguf, write_hf_folder

    weights = write_hf_folder(tmp_path / "hf")
    template = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    gguf = tmp_path / "tiny.gguf"
    write_gguf(gguf, weights, CONFIG, json.loads((tmp_path / "hf" / "tokenizer.json").read_text()),
               chat_template=template)
    return gguf


@pytest.mark.gpu
@pytest.mark.slow
def test_bench_suite_stopped_keeps_the_stages_it_finished(tmp_path, monkeypatch, capsys):
    """SIGTERM (or Ctrl-C) in the middle of a run: the rows already measured are written, marked
    as a stopped run, the exit code is 130, and the signal's handler is given back."""
    import signal

    from lutlm_bench import model

    real_run = model.run

    def run_then_stop(packages, *args):
        for i, row in enumerate(real_run(packages, *args)):
            if i:  # the second package's row: stopped as `kill PID` would stop it
                os.kill(os.getpid(), signal.SIGTERM)
            yield row

    monkeypatch.setattr(model, "run", run_then_stop)
    handler = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "results"
    argv = ["bench", "--source", str(_tiny_chat_gguf(tmp_path)), "--variants", "q4-lut,q2-lut", "--systems",
            "lutlm-native", "--prompts", "8", "--new-tokens", "2", "--reps", "1", "--build", str(tmp_path / "build"),
            "--out", str(out)]
    assert main(argv) == 130
    assert signal.getsignal(signal.SIGTERM) is handler
    assert "writing what was measured before that (1 row)" in capsys.readouterr().err
    doc = json.loads((out / "bench.json").read_text())
    assert doc["stopped"] is True and [r["variant"].split()[0] for r in doc["rows"]] == ["4-bit"]
    assert "stopped before the end" in (out / "bench.md").read_text()


@pytest.mark.gpu
@pytest.mark.browser
@pytest.mark.slow
def test_bench_suite_on_a_tiny_gguf(tmp_path, capsys):
    """`lutlm bench` end to end on a tiny GGUF: lutlm native and browser and transformers.js
    (WebGPU, wasm) in the same run; JSON with machine info and samples, Markdown, PNG. (wllama's
    llama.cpp aborts in its chat-template code on this tiny vocabulary; it runs on SmolLM2.)"""
    gguf = _tiny_chat_gguf(tmp_path)
    out = tmp_path / "results"
    argv = ["bench", "--source", str(gguf), "--variants", "q4-lut,q2-lut",
            "--systems", "lutlm-native,lutlm-browser,transformers.js", "--prompts", "8",
            "--new-tokens", "4", "--reps", "2", "--peer-budget", "5", "--build", str(tmp_path / "build"),
            "--out", str(out)]
    assert main(argv) == 0
    doc = json.loads((out / "bench.json").read_text())
    assert {"cpu", "cores", "chromium", "date"} <= doc["machine"].keys()
    rows = doc["rows"]
    assert {(r["system"].split()[0], r["where"]) for r in rows} == {
        ("lutlm", "native"), ("lutlm", "browser-webgpu"), ("transformers.js", "browser-webgpu"),
        ("transformers.js", "browser-wasm")}
    for r in rows:
        assert ROW_KEYS <= r.keys() and len(r["samples"]) == 2, r
        assert r["ttft_s"] > 0 and r["decode_tps"] > 0 and r["load_s"] > 0
        assert r.get("offsite_requests", 0) == 0
    lutlm = [r for r in rows if r["system"] == "lutlm"]
    assert all(s["new_tokens"] == 4 for r in lutlm for s in r["samples"])
    assert all(r["gpu_bytes"] > 0 for r in lutlm)
    assert all(r["memory_bytes"] > 0 for r in rows if r["where"].startswith("browser"))
    # Pyodide's heap holds the Python runtime: tens of MiB at least, and a whole number of 64 KiB wasm pages
    assert all(r["wasm_bytes"] >= 16 * 2**20 and r["wasm_bytes"] % 65536 == 0
               for r in lutlm if r["where"] == "browser-webgpu")
    table = (out / "bench.md").read_text()
    assert table.count("\n| ") == len(rows) + 1 and "2-bit LUT / 4-bit LUT" in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run reuses the compiled variants and exports
    capsys.readouterr()
    assert main(argv[:-2] + ["--systems", "lutlm-native", "--json", str(tmp_path / "again.json")]) == 0
    assert "bench: compiling" not in capsys.readouterr().err
    # ... unless a package was written by other compiler sources: that one alone is compiled again
    manifest = next((tmp_path / "build").glob("*-q2-lut")) / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"compiler": "', '"compiler": "0'))
    assert main(argv[:-2] + ["--systems", "lutlm-native", "--json", str(tmp_path / "again.json")]) == 0
    err = capsys.readouterr().err
    assert err.count("bench: compiling") == 1 and "bench: compiling q2-lut" in err


@pytest.mark.gpu
@pytest.mark.browser
@pytest.mark.slow
def test_bench_step_on_a_tiny_package(tmp_path, capsys):
    """`lutlm bench step`: the package's decode step as one command buffer, then each kernel's
    dispatches of that step on their own, natively and in Chromium, with the cache sized as a chat
    session's (a context that cannot hold the position, or exceeds the model's, is an error); with
    --prefill M the same for a prefill chunk of M tokens."""
    from runtime_py.engine import default_ctx
    from engine_fixtures import compile_package, tiny_checkpoint

    pkg = tmp_path / "pkg"
    compile_package(tiny_checkpoint(tmp_path / "hf"), pkg, "2")
    manifest = json.loads((pkg / "manifest.json").read_text())
    plan = [s["kernel"] for p in ("decode", "head", "greedy") for s in manifest["plans"][p]]
    out = tmp_path / "step.json"
    for ctx in (40, manifest["max_ctx"] + 1):
        assert main(["bench", "step", str(pkg), "--pos", "40", "--ctx", str(ctx)]) == 2
        assert f"--ctx {ctx} must be above --pos 40" in capsys.readouterr().err
    assert main(["bench", "step", str(pkg), "--pos", "40", "--rounds", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    for where in ("native", "browser"):
        mine = [r for r in rows if r["where"] == where]
        assert mine[0]["kernel"] == "step" and mine[0]["dispatches"] == len(plan) and mine[0]["share"] == 1
        assert {r["kernel"]: r["dispatches"] for r in mine[1:]} == {k: plan.count(k) for k in plan}
        assert all(r["ms"] > 0 and r["pos"] == 40 and len(r["samples"]) == 1 for r in mine)
        assert {r["ctx"] for r in mine} == {default_ctx(manifest)}
    table = capsys.readouterr().out
    assert table.count("\n| ") == len(rows) and "whole step, one command buffer" in table

    # --prefill M: the prefill and head plans for a chunk of M prompt tokens, no larger than a chunk
    assert main(["bench", "step", str(pkg), "--prefill", str(manifest["chunk"] + 1), "--where", "native"]) == 2
    assert f"a prefill chunk holds 1 to {manifest['chunk']} tokens" in capsys.readouterr().err
    plan = [s["kernel"] for p in ("prefill", "head") for s in manifest["plans"][p]]
    assert main(["bench", "step", str(pkg), "--prefill", "5", "--pos", "0", "--where", "native", "--rounds", "1",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert rows[0]["kernel"] == "step" and rows[0]["dispatches"] == len(plan)
    assert {r["kernel"]: r["dispatches"] for r in rows[1:]} == {k: plan.count(k) for k in plan}
    assert all(r["tokens"] == 5 and r["ms"] > 0 for r in rows)

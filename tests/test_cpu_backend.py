"""The CPU backend (runtime_py.cpu on the WebAssembly SIMD module, natively in wasmtime) running
real packages of a tiny random Llama: the same engine and plans as the GPU, token for token
against the numpy reference on the same quantised weights, perplexity, the chat cache, sampling,
and what it refuses."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest

from engine_fixtures import compile_package, penalized_greedy, tiny_checkpoint
from lutlm import wasm
from runtime_py.api import LutLM
from runtime_py.cpu import CODES, OPS, CpuBackend
from runtime_py.cpu_wasmtime import WasmtimeModule
from runtime_py.engine import Sampling
from runtime_py.gpu import GPUError

pytestmark = pytest.mark.slow  # compiles packages with TVM (seconds each)

PROMPTS = [[5, 17, 42], [1, 2, 3, 4, 5, 6, 7, 8], [250, 11], list(range(30, 90)), [99]]


def module(level: str = "relaxed") -> WasmtimeModule:
    return WasmtimeModule({level: str(wasm.build(level))})


def engine(package, ctx=128, level="relaxed"):
    eng = LutLM.from_folder(str(package), CpuBackend(module(level)), ctx).engine
    eng.eos = set()  # the reference has no stop id either
    return eng


def same_greedy(eng, reference, prompt, n):
    """Greedy tokens equal to the reference's, up to the first one where the reference itself
    nearly ties (its two candidates within 1e-3 of the logits' scale: the CPU kernels' int16
    activations and hi/lo tables are float-like, not float-exact, and a random tiny model has such
    ties); tokens after a tie are not compared (their prompts differ). Returns the tokens compared."""
    got, want = collect(eng, prompt, n), list(reference.generate_greedy(prompt, n, set(), n_ctx=128))
    for i, (a, b) in enumerate(zip(got, want)):
        if a != b:
            logits = reference.forward(prompt + want[:i], reference.new_cache(128))
            assert logits[b] - logits[a] < 1e-3 * np.abs(logits).max(), (prompt, i, logits[b] - logits[a])
            return i
    assert len(got) == len(want)
    return len(got)


def collect(eng, prompt, n, sampling=Sampling()):
    async def go():
        return [t async for t in eng.generate(prompt, n, sampling)]
    eng.reset()
    return asyncio.run(go())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-cpu")
    ckpt = tiny_checkpoint(root / "hf")
    return ckpt, root, {"4": compile_package(ckpt, root / "pkg4", "4")}


def package(tiny, bits, group=32, scale_bits=16, budget=None, decode="lut"):
    ckpt, root, refs = tiny
    key = f"{bits}g{group}s{scale_bits}{decode}"
    if key not in refs:
        refs[key] = compile_package(ckpt, root / key, bits, budget, decode, group, scale_bits)
    return root / key, refs[key]


def test_the_record_layout_is_the_modules():
    """Each op's record length in runtime_py.cpu is the one run.c expects (else the backend
    refuses the module), and an unknown op or a wrong count stops the list at that record."""
    cpu = CpuBackend(module("simd128"))
    for name, op in OPS.items():
        assert cpu.wasm.call("run_words", CODES[name]) == len(op.params) + len(op.buffers) + len(op.uniforms), name
    assert cpu.wasm.call("run_words", len(OPS)) == -1
    cmd = cpu.alloc(16, "a test")
    cpu.wasm.write(cmd, np.array([len(OPS), 0], np.uint32).tobytes())
    assert cpu.wasm.call("run", cmd, 1) == 1
    cpu.wasm.write(cmd, np.array([CODES["argmax"], 2], np.uint32).tobytes())  # argmax takes 3 words
    assert cpu.wasm.call("run", cmd, 1) == 1


@pytest.mark.parametrize("level", list(wasm.LEVELS))
def test_greedy_4bit_matches_reference(tiny, level):
    ckpt, root, refs = tiny
    eng = engine(root / "pkg4", level=level)
    assert sum(same_greedy(eng, refs["4"], prompt, 32) for prompt in PROMPTS) >= 0.9 * 32 * len(PROMPTS)


@pytest.mark.parametrize("bits,group,scale_bits,budget,decode", [
    ("3", 16, 8, None, "lut"), ("2", 32, 16, None, "lut"), ("t", 32, 16, None, "lut"), ("mixed", 32, 16, 3.0, "lut"),
    ("mixed", 32, 8, 4.0, "lut"), ("3", 32, 16, None, "dequant"), ("4", 32, 16, None, "dequant8")])
def test_every_format_matches_its_reference(tiny, bits, group, scale_bits, budget, decode):
    """3-bit groups of 16 with 8-bit scales, 2-bit, ternary, mixed precision (one table serving
    groups of 16 and larger), and the dequantise-decode packages: decode GEMVs, and prefill GEMMs
    for the 60-token prompt."""
    pkg, reference = package(tiny, bits, group, scale_bits, budget, decode)
    eng = engine(pkg)
    assert sum(same_greedy(eng, reference, prompt, 16) for prompt in PROMPTS[:4]) >= 0.75 * 16 * 4


def test_perplexity_within_half_a_percent(tiny):
    ckpt, root, refs = tiny
    tokens = [int(t) for t in np.random.default_rng(3).integers(0, 300, 120)]
    got = asyncio.run(engine(root / "pkg4").score(tokens))
    model = refs["4"]
    logits = model.forward(tokens, model.new_cache(128), all_logits=True).astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    want = (lse - logits[np.arange(len(tokens)), tokens[1:] + [0]])[:-1]
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)
    assert abs(np.exp(np.mean(got)) / np.exp(np.mean(want)) - 1) < 0.005


def test_chat_cache_sampling_and_penalty(tiny):
    """A second turn reuses the cache and matches a fresh engine; seeded sampling repeats and
    differs with the seed; the repetition penalty and a stop id behave as on the GPU."""
    ckpt, root, refs = tiny
    eng, fresh = engine(root / "pkg4"), engine(root / "pkg4")
    first = collect(eng, PROMPTS[1], 10)
    turn2 = PROMPTS[1] + first + [7, 8, 9]
    eng.history = PROMPTS[1] + first[:-1]
    async def go(e, p, n):
        return [t async for t in e.generate(p, n)]
    assert asyncio.run(go(eng, turn2, 12)) == collect(fresh, turn2, 12)
    s = Sampling(temperature=0.9, top_k=40, top_p=0.95, seed=11)
    a = collect(eng, PROMPTS[0], 20, s)
    assert collect(eng, PROMPTS[0], 20, s) == a and all(0 <= t < 300 for t in a)
    assert collect(eng, PROMPTS[0], 20, Sampling(temperature=0.9, seed=12)) != a
    assert collect(eng, PROMPTS[0], 8, Sampling(temperature=1.0, top_k=1, seed=5)) == collect(eng, PROMPTS[0], 8)
    model, prompt, penalty = refs["4"], [5, 5, 17, 42, 17], 1.5
    want = penalized_greedy(model, prompt, penalty, 12)
    assert collect(eng, prompt, 12, Sampling(repetition_penalty=penalty)) == want


def test_a_package_without_cpu_ops_is_refused_before_its_weights(tiny, tmp_path):
    ckpt, root, refs = tiny
    pkg = shutil.copytree(root / "pkg4", tmp_path / "old")
    manifest = json.loads((pkg / "manifest.json").read_text())
    for k in manifest["kernels"].values():
        del k["cpu"]
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    for shard in (pkg / "shards").iterdir():
        shard.write_bytes(b"")  # never read: the refusal comes first
    with pytest.raises(GPUError, match="no CPU kernels"):
        engine(pkg)
    manifest = json.loads((root / "pkg4" / "manifest.json").read_text())
    manifest["kernels"]["argmax"]["cpu"] = {"op": "conv3d"}
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GPUError, match="no op 'conv3d'"):
        engine(pkg)


def test_memory_that_cannot_grow_names_the_megabytes(tiny):
    cpu = CpuBackend(module("simd128"))
    with pytest.raises(GPUError, match=r"needs 3072\.0 MiB more .* cannot grow"):
        cpu.alloc(3 << 30, "a test")
        cpu.alloc(3 << 30, "a test")


def test_device_cpu_on_the_command_line(tiny, capsys):
    """`lutlm generate PACKAGE --device cpu` decodes what the reference decodes after the same prompt."""
    from lutlm.cli import main
    from lutlm.generation import generate

    ckpt, root, refs = tiny
    gen = generate(str(root / "pkg4"), "hi", Sampling(), 8, device="cpu")
    eos = set(json.loads((root / "pkg4" / "manifest.json").read_text())["eos_ids"])
    assert list(gen.tokens) == list(refs["4"].generate_greedy(gen.prompt, 8, eos, n_ctx=128))
    main(["generate", str(root / "pkg4"), "--prompt", "hi", "--max-tokens", "8", "--ids", "--device", "cpu"])
    assert capsys.readouterr().out.split() == [str(t) for t in generate(str(root / "pkg4"), "hi", Sampling(), 8,
                                                                        device="cpu").tokens]


def test_bench_rows_on_the_cpu(tiny, tmp_path, capsys):
    """`lutlm bench step --where cpu` (each kernel's records apart, and the whole step) and
    `lutlm bench model --where cpu` (with the host's share of a decode step) on a package."""
    from lutlm.cli import main

    ckpt, root, refs = tiny
    manifest = json.loads((root / "pkg4" / "manifest.json").read_text())
    plan = [s["kernel"] for p in ("decode", "head", "greedy") for s in manifest["plans"][p]]
    assert main(["bench", "step", str(root / "pkg4"), "--where", "cpu", "--pos", "20", "--ctx", "64", "--rounds", "1",
                 "--json", str(tmp_path / "step.json")]) == 0
    rows = json.loads((tmp_path / "step.json").read_text())
    assert rows[0]["kernel"] == "step" and rows[0]["dispatches"] == len(plan) and rows[0]["where"] == "cpu"
    assert {r["kernel"]: r["dispatches"] for r in rows[1:]} == {k: plan.count(k) for k in plan}
    assert all(r["ms"] > 0 for r in rows)
    assert main(["bench", "model", str(root / "pkg4"), "--where", "cpu", "--prompts", "8", "--new-tokens", "4",
                 "--reps", "1", "--json", str(tmp_path / "model.json")]) == 0
    (row,) = json.loads((tmp_path / "model.json").read_text())["rows"]
    assert row["where"] == "native-cpu" and row["decode_tps"] > 0 and 0 < row["host_ms_per_token"] < 1000 / row["decode_tps"]
    assert "WebAssembly SIMD" in row["adapter"]


def test_cpu_claims_name_issue_37s_targets():
    from lutlm_bench.report import cpu_claims

    def r(system, variant, where, decode, prefill=100.0):
        return {"system": system, "variant": variant, "where": where, "prompt_tokens": 42, "decode_tps": decode,
                "prefill_tps": prefill}
    rows = [r("lutlm", "2-bit lut (q2)", "browser-cpu", 120.0, 150.0), r("lutlm", "4-bit lut (q4)", "browser-cpu", 60.0),
            r("transformers.js 3", "fp32 ONNX, wasm, 1 thread(s)", "browser-wasm", 34.0, 100.0),
            r("wllama 2", "m.gguf, 2 thread(s)", "browser-wasm", 20.0)]
    said = "\n".join(cpu_claims(rows))
    assert "2-bit lut (q2) (browser, CPU) / transformers.js 3 fp32 ONNX, wasm, 1 thread(s): decode x3.53 (target 3x: met)" in said
    assert "/ wllama 2 m.gguf, 2 thread(s): decode x6.00 (target 5x: met)" in said
    assert "4-bit lut (q4) (browser, CPU) / transformers.js 3 fp32 ONNX, wasm, 1 thread(s): decode x1.76 (target 2x: not met)" in said
    assert "prefill x1.50 (target 1x: met)" in said


def test_bench_kernels_on_the_cpu(tmp_path, capsys):
    """`lutlm bench kernels --where wasm --quick`: the CPU backend's GEMVs of one SmolLM2 block, as
    records through the module's `run`, with their ratios to the fp32 and 4-bit dequantise rows."""
    from lutlm.cli import main

    assert main(["bench", "kernels", "--where", "wasm", "--quick", "--rounds", "1", "--json", str(tmp_path / "k.json")]) == 0
    rows = json.loads((tmp_path / "k.json").read_text())
    assert {(r["kernel"], r["bits"]) for r in rows} == {("fp32", 32), ("dequant", 8), ("dequant", 4), ("lut", 4), ("lut", 2)}
    assert all(r["where"] == "wasm" and r["ms"] > 0 and r["weight_gbps"] > 0 for r in rows)
    assert next(r for r in rows if r["kernel"] == "fp32")["speedup_vs_fp32"] == 1
    assert capsys.readouterr().out.count("\n| wasmtime") == len(rows)


def test_usage_tells_the_host_share_of_a_decode_step(tiny):
    """On the CPU backend a reply's usage says how much of each decode step ran outside the
    kernels' module (the figure issue 37 bounds); on a backend that cannot tell, nothing is said."""
    ckpt, root, refs = tiny
    llm = LutLM.from_folder(str(root / "pkg4"), CpuBackend(module()), 64)

    async def ask():
        return await llm.chat.completions.create(messages=[{"role": "user", "content": "hi"}], max_tokens=12,
                                                 temperature=0, ignore_eos=True)
    usage = asyncio.run(ask())["usage"]
    assert usage["completion_tokens"] == 12
    assert 0 < usage["host_ms_per_token"] < 1000 / usage["decode_tokens_per_s"]

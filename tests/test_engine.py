"""The runtime on real packages of a tiny random Llama: token-for-token against the numpy
reference on the same quantised weights, perplexity, multi-turn cache reuse, a soak test, and
every kind of bad input."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc

import numpy as np
import pytest

from engine_fixtures import compile_package, engine, penalized_greedy, tiny_checkpoint
from lutlm.errors import LutlmError
from runtime_py.engine import GenerationError, Sampling
from runtime_py.package import PackageError

pytestmark = pytest.mark.gpu

PROMPTS = [[5, 17, 42], [1, 2, 3, 4, 5, 6, 7, 8], [250, 11], list(range(30, 90)), [99]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    ckpt = tiny_checkpoint(root / "hf")
    refs = {bits: compile_package(ckpt, root / f"pkg{bits}", bits, 3.0 if bits == "mixed" else None)
            for bits in ("4", "3", "2", "t", "mixed")}
    return ckpt, root, refs


def collect(eng, prompt, n, sampling=Sampling()):
    async def go():
        return [t async for t in eng.generate(prompt, n, sampling)]
    return asyncio.run(go())


@pytest.mark.slow
def test_greedy_4bit_matches_reference_64_tokens(tiny):
    ckpt, root, refs = tiny
    eng = engine(root / "pkg4", ctx=128)
    for prompt in PROMPTS:
        want = list(refs["4"].generate_greedy(prompt, 64, set(), n_ctx=128))
        eng.reset()
        eng.eos = set()  # the reference above has no stop id either
        assert collect(eng, prompt, 64) == want


@pytest.mark.slow
@pytest.mark.parametrize("bits,decode", [("3", "dequant"), ("4", "dequant8")])
def test_dequantise_decode_packages_match_reference(tiny, bits, decode):
    ckpt, root, refs = tiny
    compile_package(ckpt, root / f"pkg{bits}{decode}", bits, decode=decode)
    eng = engine(root / f"pkg{bits}{decode}", ctx=128)
    eng.eos = set()
    for prompt in PROMPTS[:3]:
        eng.reset()
        assert collect(eng, prompt, 24) == list(refs[bits].generate_greedy(prompt, 24, set(), n_ctx=128))


@pytest.mark.slow
@pytest.mark.parametrize("bits", ["3", "2", "t", "mixed"])
def test_low_bit_packages_match_their_reference(tiny, bits):
    ckpt, root, refs = tiny
    eng = engine(root / f"pkg{bits}", ctx=128)
    eng.eos = set()
    for prompt in PROMPTS[:3]:
        eng.reset()
        assert collect(eng, prompt, 16) == list(refs[bits].generate_greedy(prompt, 16, set(), n_ctx=128))


@pytest.mark.slow
@pytest.mark.parametrize("bits,group,budget", [("3", 16, None), ("2", 32, None), ("mixed", 32, 4.0)])
def test_8bit_scales_match_their_reference(tiny, bits, group, budget):
    """8-bit scale codes in groups of 16, of 32 (three in a row of 96: a half-empty word), or mixed
    at 4.0 bits per weight (3 and 4 bits in groups of 16 to 96 on this model: one table then serves
    groups of 16 and larger ones): decode GEMVs, and prefill GEMMs for the 60-token prompt."""
    ckpt, root, refs = tiny
    out = root / f"pkg{bits}g{group}d8"
    reference = compile_package(ckpt, out, bits, budget, group=group, scale_bits=8)
    eng = engine(out, ctx=128)
    eng.eos = set()
    for prompt in PROMPTS[:4]:
        eng.reset()
        assert collect(eng, prompt, 16) == list(reference.generate_greedy(prompt, 16, set(), n_ctx=128))


def test_perplexity_through_the_runtime(tiny):
    ckpt, root, refs = tiny
    tokens = [int(t) for t in np.random.default_rng(3).integers(0, 300, 120)]
    eng = engine(root / "pkg4", ctx=128)
    got = asyncio.run(eng.score(tokens))
    model = refs["4"]
    logits = model.forward(tokens, model.new_cache(128), all_logits=True).astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    want = (lse - logits[np.arange(len(tokens)), tokens[1:] + [0]])[:-1]  # row i predicts token i + 1
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert abs(np.exp(np.mean(got)) / np.exp(np.mean(want)) - 1) < 0.005


def test_a_package_without_a_score_plan_says_so(tiny, tmp_path):
    """The reader lets a package leave out `score` (lutlm always writes it): scoring one is then a
    GenerationError, not a KeyError."""
    import shutil

    pkg = shutil.copytree(tiny[1] / "pkg4", tmp_path / "pkg4")
    manifest = json.loads((pkg / "manifest.json").read_text())
    del manifest["plans"]["score"]
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GenerationError, match="no score plan"):
        asyncio.run(engine(pkg, ctx=64).score([1, 2, 3]))


def test_multi_turn_reuses_the_cache(tiny):
    ckpt, root, refs = tiny
    eng = engine(root / "pkg4", ctx=128)
    eng.eos = set()
    first = collect(eng, PROMPTS[1], 10)
    turn2 = PROMPTS[1] + first + [7, 8, 9]
    assert eng._reuse(turn2) == len(PROMPTS[1]) + len(first) - 1  # all but the last answer token
    reused = collect(eng, turn2, 12)
    fresh = engine(root / "pkg4", ctx=128)
    fresh.eos = set()
    assert reused == collect(fresh, turn2, 12)


def test_a_stopped_generation_spoils_nothing(tiny):
    """Each decode step is queued before the token it runs is read back, so a generation that
    stops (at an end-of-sequence id, or cancelled) leaves one step behind; the next turn, which
    reuses the cache, must still match a fresh engine."""
    ckpt, root, refs = tiny
    fresh = engine(root / "pkg4", ctx=128)
    fresh.eos = set()
    want = collect(fresh, PROMPTS[1], 8)
    eng = engine(root / "pkg4", ctx=128)
    eng.eos = {want[4]}
    got = collect(eng, PROMPTS[1], 20)
    assert got == want[:want.index(want[4])]
    eng.eos = set()
    out: list[int] = []

    async def cancelled_after_three(prompt):
        async for t in eng.generate(prompt, 20, cancelled=lambda: len(out) >= 3):
            out.append(t)
    turn2 = PROMPTS[1] + got + [7, 8, 9]
    asyncio.run(cancelled_after_three(turn2))
    turn3 = turn2 + out + [10]
    assert len(out) == 3 and eng._reuse(turn3) == len(turn2) + 2
    fresh.reset()
    assert collect(eng, turn3, 6) == collect(fresh, turn3, 6)


def test_sampling_is_seeded_and_stays_in_vocabulary(tiny):
    ckpt, root, refs = tiny
    eng = engine(root / "pkg4", ctx=128)
    eng.eos = set()
    s = Sampling(temperature=0.9, top_k=40, top_p=0.95, seed=11)
    a = collect(eng, PROMPTS[0], 20, s)
    eng.reset()
    assert collect(eng, PROMPTS[0], 20, s) == a and all(0 <= t < 300 for t in a)
    eng.reset()
    assert collect(eng, PROMPTS[0], 20, Sampling(temperature=0.9, seed=12)) != a


@pytest.mark.slow
def test_soak_500_decode_steps_allocates_nothing(tiny):
    ckpt, root, refs = tiny
    eng = engine(root / "pkg4", ctx=128)
    eng.eos = set()
    be = eng.backend
    collect(eng, [3], 20)  # warm up every path
    before = dict(be.allocated)
    gc.collect()
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    steps = 0
    while steps < 500:
        eng.reset()
        steps += len(collect(eng, [3, 4], 120))
    gc.collect()
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(snap0, "filename"))
    tracemalloc.stop()
    assert be.allocated == before
    assert grown < 256 * 1024, f"Python memory grew by {grown} bytes over {steps} steps"


def test_bad_requests(tiny):
    ckpt, root, refs = tiny
    eng = engine(root / "pkg4", ctx=32)
    with pytest.raises(GenerationError, match="context holds 32"):
        collect(eng, list(range(40)), 4)
    with pytest.raises(GenerationError, match="max_tokens"):
        collect(eng, [1, 2], 0)
    with pytest.raises(GenerationError, match="top_p"):
        collect(eng, [1, 2], 4, Sampling(temperature=1.0, top_p=0))
    with pytest.raises(GenerationError, match="token ids"):
        collect(eng, [1, 300], 4)
    assert collect(eng, [1, 2], 3)  # the engine still works after refusing


def corrupt(root, src, dst, edit):
    import shutil

    shutil.copytree(root / src, root / dst, dirs_exist_ok=True)
    edit(root / dst)
    return root / dst


def _subgroup_kernel(manifest: dict) -> str:
    """A subgroup GEMM (its bindings are not attention's)."""
    return next(kid for kid, k in manifest["kernels"].items() if "fallback" in k and kid.startswith("gemm"))


def test_damaged_packages(tiny):
    ckpt, root, refs = tiny

    def flip(p):
        shard = p / "shards" / "000.bin"
        data = bytearray(shard.read_bytes())
        data[1000] ^= 1
        shard.write_bytes(bytes(data))

    with pytest.raises(PackageError, match="shards/000.bin: sha256 mismatch"):
        engine(corrupt(root, "pkg4", "flipped", flip))

    def truncate(p):
        shard = p / "shards" / "000.bin"
        shard.write_bytes(shard.read_bytes()[:-10])

    with pytest.raises(PackageError, match="shards/000.bin: .* bytes, the manifest says"):
        engine(corrupt(root, "pkg4", "truncated", truncate))

    def edit_manifest(change):
        def go(p):
            m = json.loads((p / "manifest.json").read_text())
            change(m)
            (p / "manifest.json").write_text(json.dumps(m))
        return go

    cases = [
        (lambda m: m.update(version=1), "version 1 is older than this runtime reads .* compile the model again"),
        (lambda m: m["config"].update(n_layer=10**9), "n_layer must be an integer"),
        (lambda m: m["buffers"].update(logits="4 * ctx * ctx * ctx * 1000"), "buffer logits needs"),
        (lambda m: m["shards"][0].update(file="../../etc/passwd"), "shard 0 has no valid file name"),
        (lambda m: m["tensors"]["output_norm.weight"].update(offset=10**9), "past the end of its shard"),
        (lambda m: m["plans"]["decode"][0].update(kernel="nope"), "names no known kernel"),
        (lambda m: m["kernels"]["attention"].update(grid=["__import__('os')", "1", "1"]), "unexpected"),
        (lambda m: m["kernels"][_subgroup_kernel(m)].update(fallback="nope"), "fallback 'nope' is not a kernel"),
        (lambda m: m["kernels"][_subgroup_kernel(m)].update(fallback="attention"), "with the same bindings"),
    ]
    for i, (change, message) in enumerate(cases):
        with pytest.raises(PackageError, match=message):
            eng = engine(corrupt(root, "pkg4", f"bad{i}", edit_manifest(change)), ctx=64)
            collect(eng, [1, 2], 2)


@pytest.mark.slow
def test_interrupted_compile_leaves_nothing(tiny, monkeypatch):
    ckpt, root, refs = tiny
    import lutlm.package as package

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(package, "_write_shards", boom)
    with pytest.raises(KeyboardInterrupt):
        compile_package(ckpt, root / "interrupted")
    assert not (root / "interrupted").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".interrupted")]
    with pytest.raises(LutlmError, match="not a model package"):
        (root / "occupied").mkdir()
        (root / "occupied" / "x").write_text("keep me")
        compile_package(ckpt, root / "occupied")
    assert (root / "occupied" / "x").read_text() == "keep me"


def test_repetition_penalty_matches_numpy(tiny):
    ckpt, root, refs = tiny
    model, prompt, penalty = refs["4"], [5, 5, 17, 42, 17], 1.5
    want = penalized_greedy(model, prompt, penalty, 16)
    eng = engine(root / "pkg4", ctx=128)
    eng.eos = set()
    assert collect(eng, prompt, 16, Sampling(repetition_penalty=penalty)) == want

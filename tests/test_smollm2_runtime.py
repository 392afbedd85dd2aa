"""SmolLM2-135M-Instruct compiled to a 4-bit package and run on the native GPU runtime (lavapipe
here): greedy tokens equal the numpy reference on the same quantised weights.

CI runs PROMPTS[:2] for 16 tokens (lavapipe decodes ~1.5 tokens/s); LUTLM_RUNTIME_TOKENS=64
LUTLM_RUNTIME_PROMPTS=5 runs the full check quoted in the closing note."""

from __future__ import annotations

import asyncio
import os

import pytest

from engine_fixtures import compile_package, engine
from runtime_py import ChatTemplate

pytestmark = [pytest.mark.gpu, pytest.mark.model, pytest.mark.slow]

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "List three prime numbers.",
           "Explain photosynthesis to a child.", "Translate 'good morning' into Spanish."]
TOKENS = int(os.environ.get("LUTLM_RUNTIME_TOKENS", 16))
COUNT = int(os.environ.get("LUTLM_RUNTIME_PROMPTS", 2))


@pytest.fixture(scope="module")
def smollm2(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2") / "q4"
    reference = compile_package(checkpoint, out, "4")
    return engine(out, ctx=256), reference


@pytest.mark.parametrize("text", PROMPTS[:COUNT])
def test_greedy_equals_reference(smollm2, tokenizer, text):
    eng, reference = smollm2
    prompt = tokenizer.encode(ChatTemplate().render([{"role": "user", "content": text}]), special=True)
    eng.reset()
    eng.eos = set()

    async def run():
        return [t async for t in eng.generate(prompt, TOKENS)]
    got = asyncio.run(run())
    want = list(reference.generate_greedy(prompt, TOKENS, set(), n_ctx=256))
    assert got == want, (tokenizer.decode(got), tokenizer.decode(want))

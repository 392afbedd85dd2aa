"""The numpy reference model on the real SmolLM2 weights: answers, cache consistency, perplexity."""

from __future__ import annotations

import numpy as np
import pytest

from lutlm.perplexity import load_text, perplexity, windows
from lutlm.reference import Reference
from runtime_py import ChatTemplate

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def model(checkpoint):
    return Reference(checkpoint)


def chat_answer(model, checkpoint, tokenizer, question: str, max_tokens: int = 24) -> str:
    template = ChatTemplate.from_template(checkpoint.chat_template)
    prompt = tokenizer.encode(template.render([{"role": "user", "content": question}]), special=True)
    ids = list(model.generate_greedy(prompt, max_tokens, {checkpoint.config.eos_id}, n_ctx=256))
    return tokenizer.decode(ids)


@pytest.mark.slow
def test_capital_of_france_is_paris(model, checkpoint, tokenizer):
    answer = chat_answer(model, checkpoint, tokenizer, "What is the capital of France?")
    assert "Paris" in answer


def test_kv_cache_decode_equals_full_forward(model, tokenizer):
    ids = tokenizer.encode("The history of the Roman Empire begins with the founding of")
    full = model.forward(ids, model.new_cache(64), all_logits=True)
    assert full.dtype == np.float32  # a float64 scalar anywhere silently makes every matmul 10x slower
    cache = model.new_cache(64)
    step_logits = [model.forward(ids[:5], cache)]  # a prefill chunk, then one token at a time
    step_logits += [model.forward([t], cache) for t in ids[5:]]
    np.testing.assert_allclose(step_logits[0], full[4], rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(np.stack(step_logits[1:]), full[5:], rtol=1e-4, atol=2e-4)
    assert cache.length == len(ids)


def test_context_overflow_is_an_error(model):
    from lutlm.errors import LutlmError

    cache = model.new_cache(4)
    model.forward([1, 2, 3], cache)
    with pytest.raises(LutlmError, match="exceed the context"):
        model.forward([4, 5], cache)


@pytest.mark.slow
def test_perplexity_of_three_wiki_windows_matches_llama_cpp(model, tokenizer):
    """llama.cpp (llama-cpp-python) scores the first 3 windows of 512 tokens at 16.15 (Q4_1 weights)."""
    tokens = tokenizer.encode(load_text("wiki"))
    result = perplexity(model, windows(tokens, 512, 3))
    assert result.scored == 3 * 511
    assert result.ppl == pytest.approx(16.15, rel=0.01)

"""HF `tokenizers` configured directly from a GGUF file's raw fields: the tokenizer oracle.

Built independently of lutlm's GGUF-to-tokenizer.json conversion, so that a mistake there cannot
hide behind the same mistake in the oracle.
"""

from __future__ import annotations

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers


def hf_tokenizer_from_gguf(path) -> Tokenizer:
    reader = GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("tokenizer.ggml.model") == "gpt2"
    assert field("tokenizer.ggml.pre") == "smollm", "this oracle knows the SmolLM pre-tokeniser only"
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    vocab = {t: i for i, t in reversed(list(enumerate(tokens)))}
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i, t in enumerate(types) if t == 3])
    return tok

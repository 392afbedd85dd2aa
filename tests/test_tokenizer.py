"""The pure-Python tokenizer against HF `tokenizers` configured from the same GGUF data."""

from __future__ import annotations

import random
import unicodedata

import pytest

from hf_oracle import hf_tokenizer_from_gguf
from lutlm.assets import TEXT_NAMES, fetch
from runtime_py import Tokenizer
from runtime_py.tokenizer import bytes_to_unicode

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def hf(model_path):
    return hf_tokenizer_from_gguf(model_path)


@pytest.fixture(scope="module")
def hf_plain(model_path):
    """The oracle with special tokens treated as ordinary text (our default, and llama.cpp's)."""
    tok = hf_tokenizer_from_gguf(model_path)
    tok.encode_special_tokens = True
    return tok


@pytest.mark.slow
@pytest.mark.parametrize("name", TEXT_NAMES)
def test_texts_match_hf_and_round_trip(name, tokenizer, hf, hf_plain):
    text = fetch(name).read_text(encoding="utf-8")
    ids = tokenizer.encode(text)
    assert ids == hf_plain.encode(text, add_special_tokens=False).ids
    assert tokenizer.encode(text, special=True) == hf.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids) == text


# Ranges that cover ASCII, Latin, combining marks, Greek..Indic, punctuation and format characters,
# CJK, Hangul, emoji, variation selectors and specials, the astral planes, and C0/C1 controls.
_RANGES = [(0x00, 0x7F), (0x80, 0x2FF), (0x300, 0x36F), (0x370, 0x1FFF), (0x2000, 0x206F), (0x3000, 0x9FFF),
           (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x00, 0x20), (0x80, 0x9F), (0xFE00, 0xFFFF), (0x10000, 0x10FFFF)]
_JOINERS = [" ", "  ", "\n", "\n\n", "\t", "\r\n", "1", "42", "a", "'s", "'LL", "\x1c", "\u00a0", "\u3000", "\x85",
            "\u200d", "\U0001F468\u200d\U0001F469", "e\u0301", "<|im_end|>", "   x"]


def fuzz_strings(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(1, 40)):
            while True:
                lo, hi = rng.choice(_RANGES)
                c = chr(rng.randint(lo, hi))
                # skip surrogates and code points unassigned in this Python's Unicode database
                # (HF's Unicode tables may be newer; assignment changes classification)
                if not 0xD800 <= ord(c) <= 0xDFFF and unicodedata.category(c) != "Cn":
                    break
            chars.append(c)
            if rng.random() < 0.3:
                chars.append(rng.choice(_JOINERS))
        out.append("".join(chars))
    return out


def test_fuzz_matches_hf(tokenizer, hf_plain):
    for s in fuzz_strings(3000, seed=1):
        assert tokenizer.encode(s) == hf_plain.encode(s, add_special_tokens=False).ids, repr(s)


def test_fuzz_round_trip(tokenizer):
    """decode(encode(s)) == s for every string whose bytes the vocabulary can spell.

    SmolLM2's vocabulary lacks tokens for the control bytes 0x04 0x06 0x13 0x14 0x16 0x1D (and for
    bytes that never occur in UTF-8 text); like HF and llama.cpp we drop those characters."""
    byte_chars = bytes_to_unicode()
    spellable = {b for b in range(256) if byte_chars[b] in tokenizer.vocab}
    assert spellable >= set(range(0x20, 0x7F)) | {0x09, 0x0A, 0x0D}
    checked = 0
    for s in fuzz_strings(3000, seed=2):
        ids = tokenizer.encode(s)
        if set(s.encode("utf-8")) <= spellable:
            assert tokenizer.decode(ids) == s, repr(s)
            checked += 1
        else:
            kept = "".join(c for c in s if set(c.encode("utf-8")) <= spellable)
            assert tokenizer.decode(ids) == kept
    assert checked > 1500


def test_unspellable_control_bytes_are_dropped_like_hf(tokenizer, hf_plain):
    s = "a\x14b \x04x\x1dy"
    assert tokenizer.encode(s) == hf_plain.encode(s, add_special_tokens=False).ids
    assert tokenizer.decode(tokenizer.encode(s)) == "ab xy"


def test_special_tokens_parsed_only_when_asked(tokenizer):
    text = "<|im_start|>user\nHi<|im_end|>"
    assert tokenizer.encode(text, special=True)[0] == 1
    assert tokenizer.encode(text, special=True)[-1] == 2
    plain = tokenizer.encode(text)
    assert 1 not in plain and 2 not in plain
    assert tokenizer.decode(plain) == text
    assert tokenizer.decode(tokenizer.encode(text, special=True)) == text
    assert tokenizer.decode(tokenizer.encode(text, special=True), skip_special=True) == "user\nHi"


def test_digits_are_split_individually(tokenizer, hf_plain):
    ids = tokenizer.encode("In 2024, 1234567 people")
    digits = [tokenizer.decode([i]) for i in ids if tokenizer.decode([i]).strip().isdigit()]
    assert digits == list("2024") + list("1234567")


def test_stream_decoder_never_breaks_a_character(tokenizer):
    text = "Grüße 👩‍👩‍👧 ぁあぃ 中文 e\u0301 ℌ𝔢𝔩𝔩𝔬 🇫🇷 done"
    ids = tokenizer.encode(text)
    # several multi-byte characters must span several tokens, or the test proves nothing
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
    stream = tokenizer.stream()
    pieces = [stream.feed(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_stream_decoder_matches_decode_on_invalid_sequences(tokenizer):
    """A token sequence that is not valid UTF-8 renders as U+FFFD, the same way in both paths."""
    byte_chars = bytes_to_unicode()
    lead = tokenizer.vocab[byte_chars[0xE4]]  # first byte of a 3-byte character, then cut short
    ids = [lead] + tokenizer.encode("ok") + [lead]
    stream = tokenizer.stream()
    streamed = "".join(stream.feed(i) for i in ids) + stream.flush()
    assert streamed == tokenizer.decode(ids) == "\ufffdok\ufffd"


def test_out_of_range_id_is_a_clear_error(tokenizer):
    from runtime_py import TokenizerError

    with pytest.raises(TokenizerError, match="out of range"):
        tokenizer.decode([tokenizer.vocab_size + 5])


def test_unsupported_tokenizer_is_refused():
    from runtime_py import TokenizerError

    with pytest.raises(TokenizerError, match="not supported"):
        Tokenizer({"model": {"type": "Unigram", "vocab": []}})
    with pytest.raises(TokenizerError, match="Metaspace"):
        Tokenizer({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Metaspace"}})

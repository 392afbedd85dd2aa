"""Byte-level BPE tokenizer that reads Hugging Face `tokenizer.json`, standard library only.

It runs inside Pyodide, so no `tokenizers`, no `regex`, no numpy. The test suite holds it to
token-for-token equality with HF `tokenizers` configured from the same data.
"""

from __future__ import annotations

import codecs
import json
import re
import reprlib
from typing import Any, Iterable

from .pretokenize import PreTokenizer, PreTokenizerError


class TokenizerError(ValueError):
    """The tokenizer data is malformed or uses a feature this runtime does not implement."""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, used by ByteLevel vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}
_CACHE_LIMIT = 200_000
MAX_ID = 1 << 22  # token ids index a list: an id of 10**12 must not allocate one


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_ID


def _vocab(vocab: Any) -> dict[str, int]:
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerError("no BPE vocabulary (model.vocab must map tokens to ids)")
    bad = next((k for k, v in vocab.items() if not _is_id(v)), None)
    if bad is not None:
        raise TokenizerError(f"vocabulary entry {reprlib.repr(bad)} has id {reprlib.repr(vocab[bad])}, not an integer in [0, {MAX_ID})")
    return dict(vocab)


def _ranks(merges: Any, vocab: dict[str, int]) -> dict[tuple[str, str], int]:
    """Merge ranks; each merge joins two tokens of the vocabulary into a third (else BPE would
    produce a symbol it has no id for)."""
    if not isinstance(merges, (list, type(None))):
        raise TokenizerError("merges must be a list")
    ranks: dict[tuple[str, str], int] = {}
    for rank, merge in enumerate(merges or []):
        pair = tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge) if isinstance(merge, list) else ()
        if len(pair) != 2 or not all(isinstance(t, str) and t in vocab for t in pair) or pair[0] + pair[1] not in vocab:
            raise TokenizerError(f"malformed merge #{rank}: {reprlib.repr(merge)} (two tokens of the vocabulary that join into a third)")
        ranks.setdefault(pair, rank)
    return ranks


def _added_tokens(tokens: Any) -> tuple[dict[str, int], set[int]]:
    """The added tokens (content -> id) and the ids of the special ones."""
    if not isinstance(tokens, (list, type(None))):
        raise TokenizerError("added_tokens must be a list")
    added: dict[str, int] = {}
    special: set[int] = set()
    for i, tok in enumerate(tokens or []):
        if not (isinstance(tok, dict) and isinstance(tok.get("content"), str) and tok["content"] and _is_id(tok.get("id"))):
            raise TokenizerError(f"added token #{i} must have a non-empty content and an id in [0, {MAX_ID}): {reprlib.repr(tok)}")
        added[tok["content"]] = tok["id"]
        if tok.get("special"):
            special.add(tok["id"])
    return added, special


class Tokenizer:
    """Encode text to ids and ids to bytes/text for a BPE model described by `tokenizer.json`."""

    def __init__(self, config: dict[str, Any]):
        if not isinstance(config, dict):
            raise TokenizerError("the tokenizer must be an object")
        model = config.get("model") or {}
        if not isinstance(model, dict):
            raise TokenizerError("model must be an object")
        if model.get("type", "BPE") != "BPE":
            raise TokenizerError(f"tokenizer model {reprlib.repr(model.get('type'))} is not supported (only byte-level BPE)")
        for option in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(option):
                raise TokenizerError(f"BPE option {option}={reprlib.repr(model[option])} is not supported")
        if model.get("byte_fallback"):
            raise TokenizerError("BPE byte_fallback (SentencePiece-style vocabularies) is not supported")
        if config.get("normalizer"):
            kind = config["normalizer"].get("type") if isinstance(config["normalizer"], dict) else config["normalizer"]
            raise TokenizerError(f"tokenizer normalizer {reprlib.repr(kind)} is not supported")
        try:
            self.pre_tokenizer = PreTokenizer(config.get("pre_tokenizer"))
        except PreTokenizerError as exc:
            raise TokenizerError(str(exc)) from None
        if not self.pre_tokenizer.byte_level:
            raise TokenizerError("only byte-level BPE tokenizers are supported (no ByteLevel pre-tokeniser found)")

        self.vocab: dict[str, int] = _vocab(model.get("vocab"))
        self.ranks = _ranks(model.get("merges"), self.vocab)
        self.ignore_merges = bool(model.get("ignore_merges"))
        unk = model.get("unk_token")
        if unk is not None and (not isinstance(unk, str) or unk not in self.vocab):
            raise TokenizerError(f"unk_token {reprlib.repr(unk)} is not in the vocabulary")
        self.unk_token: str | None = unk
        self.fuse_unk = bool(model.get("fuse_unk"))

        self.added, self.special_ids = _added_tokens(config.get("added_tokens"))
        self.vocab.update(self.added)
        size = max(self.vocab.values()) + 1
        self.id_to_token: list[str | None] = [None] * size
        for token, idx in self.vocab.items():
            if self.id_to_token[idx] is None or token in self.added:
                self.id_to_token[idx] = token
        self._id_bytes: list[bytes | None] = [self._token_bytes(i) for i in range(size)]
        # Longest first, so that an added token that contains another wins.
        ordered = sorted(self.added, key=len, reverse=True)
        self._added_re = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_file(cls, path: str) -> "Tokenizer":
        with open(path, encoding="utf-8") as f:
            try:
                config = json.load(f)
            except RecursionError:
                raise TokenizerError(f"{path}: JSON nested too deeply") from None
            except ValueError as exc:
                raise TokenizerError(f"{path} is not JSON ({exc})") from None
        return cls(config)

    @property
    def vocab_size(self) -> int:
        return len(self.id_to_token)

    def token_id(self, token: str) -> int:
        try:
            return self.vocab[token]
        except KeyError:
            raise TokenizerError(f"token {token!r} is not in the vocabulary") from None

    # -- encoding -------------------------------------------------------------------------
    def encode(self, text: str, special: bool = False) -> list[int]:
        """Token ids of `text`; with `special`, added tokens such as `<|im_start|>` are parsed."""
        if not special or self._added_re is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        last = 0
        for m in self._added_re.finditer(text):
            ids += self._encode_ordinary(text[last : m.start()])
            ids.append(self.added[m.group()])
            last = m.end()
        ids += self._encode_ordinary(text[last:])
        return ids

    def encode_parts(self, parts: Iterable[tuple[str, bool]]) -> list[int]:
        """Token ids of the concatenated parts, added tokens parsed only in parts marked True.

        Text between two parsed added tokens is encoded as one run even where it spans several
        parts, so the ids equal `encode(text, special=True)` whenever the unmarked parts spell no
        added token; where they do, those stay ordinary text (a chat message cannot forge markup).
        """
        ids: list[int] = []
        run: list[str] = []
        for text, markup in parts:
            last = 0
            if markup and self._added_re is not None:
                for m in self._added_re.finditer(text):
                    run.append(text[last:m.start()])
                    ids += self._encode_ordinary("".join(run))
                    ids.append(self.added[m.group()])
                    run, last = [], m.end()
            run.append(text[last:])
        return ids + self._encode_ordinary("".join(run))

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for piece in self.pre_tokenizer(text):
            word = "".join(_BYTE_TO_CHAR[b] for b in piece.encode("utf-8"))
            hit = cache.get(word)
            if hit is None:
                hit = self._bpe(word)
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[word] = hit
            ids += hit
        return ids

    def _bpe(self, word: str) -> list[int]:
        vocab = self.vocab
        if self.ignore_merges and word in vocab:
            return [vocab[word]]
        symbols = self._symbols(word)
        ranks = self.ranks
        while len(symbols) > 1:
            best_rank = None
            best = ("", "")
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, pair
            if best_rank is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            n = len(symbols)
            while i < n:
                if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return [vocab[s] for s in symbols]

    def _symbols(self, word: str) -> list[str]:
        """The characters BPE starts from. Like HF, a character missing from the vocabulary becomes
        the unk token if there is one (consecutive ones fused with `fuse_unk`), else it is dropped:
        SmolLM2's vocabulary, for one, has no token for the control bytes 0x04, 0x06, 0x13, 0x14,
        0x16 and 0x1D."""
        vocab = self.vocab
        if all(c in vocab for c in word):
            return list(word)
        symbols: list[str] = []
        for c in word:
            if c in vocab:
                symbols.append(c)
            elif self.unk_token is not None and not (self.fuse_unk and symbols and symbols[-1] == self.unk_token):
                symbols.append(self.unk_token)
        return symbols

    # -- decoding -------------------------------------------------------------------------
    def _token_bytes(self, idx: int) -> bytes | None:
        token = self.id_to_token[idx]
        if token is None:
            return None
        if token in self.added:
            return token.encode("utf-8")
        try:
            return bytes(_CHAR_TO_BYTE[c] for c in token)
        except KeyError:
            return token.encode("utf-8")

    def token_bytes(self, idx: int) -> bytes:
        """The bytes token `idx` stands for (its literal text for added tokens)."""
        if not 0 <= idx < len(self._id_bytes) or self._id_bytes[idx] is None:
            raise TokenizerError(f"token id {idx} is out of range (vocabulary of {self.vocab_size})")
        return self._id_bytes[idx]  # type: ignore[return-value]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        data = b"".join(self.token_bytes(i) for i in ids if not (skip_special and i in self.special_ids))
        return data.decode("utf-8", errors="replace")

    def stream(self, skip_special: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special)


class StreamDecoder:
    """Turns ids arriving one by one into text pieces that never split a UTF-8 character.

    Bytes of an incomplete character are held back until the token that completes them arrives;
    invalid sequences become U+FFFD exactly as `Tokenizer.decode` would render them.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = False):
        self.tokenizer = tokenizer
        self.skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, idx: int) -> str:
        if self.skip_special and idx in self.tokenizer.special_ids:
            return ""
        return self._utf8.decode(self.tokenizer.token_bytes(idx))

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end renders as U+FFFD)."""
        return self._utf8.decode(b"", final=True)

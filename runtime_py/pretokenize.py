"""Pre-tokenisers of Hugging Face `tokenizers`, rebuilt on the standard library.

HF tokenizers splits text with Oniguruma regexes that use Unicode properties (`\\p{L}`, `\\p{N}`)
and Oniguruma's `\\s`. Python's `re` has neither property classes nor the same `\\s` (it also
counts U+001C..U+001F as space), so patterns are translated: each property becomes an explicit
character class built once from `unicodedata`. Only the pre-tokeniser configurations we can test
against HF are accepted; anything else is refused with a clear error rather than tokenised
slightly wrong.
"""

from __future__ import annotations

import re
import reprlib
import sys
import unicodedata
from functools import lru_cache
from typing import Any, Callable

# Oniguruma's \s in Unicode mode: the White_Space property.
_WHITE_SPACE = "\t\n\x0b\x0c\r\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"

# The GPT-2 split regex that ByteLevel(use_regex=True) applies.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


class PreTokenizerError(ValueError):
    """The tokenizer configuration asks for a pre-tokeniser this runtime does not implement."""


MAX_PATTERN = 10_000  # characters of a Split pattern (GPT-2's is 82, Llama 3's 166)


def _escape(cp: int) -> str:
    return f"\\U{cp:08x}"


@lru_cache(maxsize=None)
def _all_category_ranges() -> dict[str, str]:
    """Character-class bodies (no brackets) for Letters and Numbers, from one scan of Unicode.

    The scan over every code point is the tokenizer's start-up cost (noticeable under Pyodide),
    so both classes come out of a single pass.
    """
    parts: dict[str, list[str]] = {"L": [], "N": []}
    current, start = "", 0
    for cp in range(sys.maxunicode + 2):
        major = unicodedata.category(chr(cp))[0] if cp <= sys.maxunicode else ""
        if major != current:
            if current in parts:
                end = cp - 1
                parts[current].append(_escape(start) if start == end else f"{_escape(start)}-{_escape(end)}")
            current, start = major, cp
    return {major: "".join(body) for major, body in parts.items()}


def _category_ranges(major: str) -> str:
    return _all_category_ranges()[major]


def translate_pattern(pattern: str) -> str:
    """Rewrite an Oniguruma pattern into an equivalent Python `re` pattern."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            if nxt in "pP" and pattern[i + 2 : i + 3] == "{":
                close = pattern.find("}", i)
                if close < 0:
                    raise PreTokenizerError(f"unclosed \\{nxt}{{ in {reprlib.repr(pattern)}")
                name = pattern[i + 3 : close]
                if name not in ("L", "N"):
                    raise PreTokenizerError(f"unsupported Unicode property \\{nxt}{{{name}}} in {pattern!r}")
                body = _category_ranges(name)
                if in_class:
                    if nxt == "P":
                        raise PreTokenizerError(f"negated property inside a class in {pattern!r}")
                    out.append(body)
                else:
                    out.append(f"[{'^' if nxt == 'P' else ''}{body}]")
                i = close + 1
                continue
            if nxt in "sS":
                if in_class and nxt == "S":
                    raise PreTokenizerError(f"\\S inside a class in {pattern!r}")
                if in_class:
                    out.append(_WHITE_SPACE)
                else:
                    out.append(f"[{'^' if nxt == 'S' else ''}{_WHITE_SPACE}]")
                i += 2
                continue
            if nxt in "wWbB":
                raise PreTokenizerError(f"unsupported escape \\{nxt} in {pattern!r}")
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if ch == "[" and not in_class:
            in_class = True
            out.append(ch)
            if pattern[i + 1 : i + 2] == "^":
                out.append("^")
                i += 1
            if pattern[i + 1 : i + 2] == "]":  # a literal ] first in a class
                out.append("\\]")
                i += 1
        elif ch == "]" and in_class:
            in_class = False
            out.append(ch)
        elif ch == "[" and in_class:
            out.append("\\[")
        else:
            out.append(ch)
        i += 1
    return "".join(out)


@lru_cache(maxsize=None)
def _compiled(pattern: str) -> re.Pattern[str]:
    return _regex(translate_pattern(pattern), pattern)


def _regex(translated: str, pattern: str) -> re.Pattern[str]:
    """`re.compile`, with a pattern it refuses (or nests too deeply for it) a PreTokenizerError."""
    try:
        return re.compile(translated)
    except (re.error, RecursionError, OverflowError) as exc:
        raise PreTokenizerError(f"pattern {reprlib.repr(pattern)} does not compile ({exc})") from None


@lru_cache(maxsize=None)
def _numeric() -> re.Pattern[str]:
    # Rust's char::is_numeric, which HF's Digits pre-tokeniser uses: categories Nd, Nl, No.
    return re.compile(f"[{_category_ranges('N')}]")


Splitter = Callable[[str], list[str]]


def _isolate(regex: re.Pattern[str]) -> Splitter:
    """HF's `Isolated` split behaviour: matches and the text between them each become a piece."""

    def split(text: str) -> list[str]:
        pieces: list[str] = []
        last = 0
        for m in regex.finditer(text):
            if m.start() > last:
                pieces.append(text[last : m.start()])
            if m.end() > m.start():
                pieces.append(m.group())
            last = m.end()
        if last < len(text):
            pieces.append(text[last:])
        return pieces

    return split


def _digits(individual: bool) -> Splitter:
    if individual:
        return _isolate(_numeric())
    return _isolate(re.compile(f"[{_category_ranges('N')}]+"))


def _byte_level(add_prefix_space: bool, use_regex: bool) -> Splitter:
    regex_split = _isolate(_compiled(GPT2_PATTERN)) if use_regex else None

    def split(text: str) -> list[str]:
        if add_prefix_space and not text.startswith(" "):
            text = " " + text
        return regex_split(text) if regex_split else [text]

    return split


def _split(config: dict[str, Any]) -> Splitter:
    pattern = config.get("pattern") or {}
    behavior = str(config.get("behavior", "")).lower()
    if behavior != "isolated" or config.get("invert"):
        raise PreTokenizerError(f"Split pre-tokeniser with behavior {reprlib.repr(config.get('behavior'))} is not supported")
    kind = next((k for k in ("Regex", "String") if isinstance(pattern, dict) and k in pattern), None)
    if kind is None or not isinstance(pattern[kind], str) or not 0 < len(pattern[kind]) <= MAX_PATTERN:
        raise PreTokenizerError(f"Split pre-tokeniser needs a pattern (Regex or String) of 1 to {MAX_PATTERN} "
                                f"characters: {reprlib.repr(config)}")
    if kind == "Regex":
        return _isolate(_compiled(pattern["Regex"]))
    return _isolate(re.compile(re.escape(pattern["String"])))


class PreTokenizer:
    """Splits text into the pieces BPE merges within; says whether pieces are byte-level mapped."""

    def __init__(self, config: dict[str, Any] | None):
        if not isinstance(config, (dict, type(None))):
            raise PreTokenizerError(f"pre_tokenizer must be an object, not {reprlib.repr(config)}")
        steps = config.get("pretokenizers") if config and config.get("type") == "Sequence" else [config]
        if not isinstance(steps, list) or not all(isinstance(step, (dict, type(None))) for step in steps):
            raise PreTokenizerError("a Sequence pre-tokeniser needs a list of pre-tokenisers (objects)")
        self.splitters: list[Splitter] = []
        self.byte_level = False
        for step in steps:
            if step is None:
                continue
            kind = step.get("type")
            if self.byte_level:
                raise PreTokenizerError(f"pre-tokeniser {reprlib.repr(kind)} after ByteLevel is not supported")
            if kind == "ByteLevel":
                self.byte_level = True
                self.splitters.append(_byte_level(bool(step.get("add_prefix_space")), step.get("use_regex", True)))
            elif kind == "Digits":
                self.splitters.append(_digits(bool(step.get("individual_digits"))))
            elif kind == "Split":
                self.splitters.append(_split(step))
            else:
                raise PreTokenizerError(f"pre-tokeniser {reprlib.repr(kind)} is not supported")

    def __call__(self, text: str) -> list[str]:
        pieces = [text]
        for split in self.splitters:
            pieces = [p for piece in pieces for p in split(piece)]
        return pieces

"""Perplexity over consecutive fixed-size windows of a text, the measure of what quantisation costs.

Definition (the same as the llama.cpp figures we compare with): tokenize the whole text without
BOS, cut it into windows of `window` consecutive tokens from the start, run each window from an
empty cache, score every token after the first of each window, ppl = exp(mean NLL).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .assets import TEXT_NAMES, fetch
from .errors import LutlmError
from .files import read_text
from .reference import Reference

TEXT_BYTES = 256 << 20  # an evaluation or calibration text (the shipped ones are a few MiB)

_DOC_MARKER = re.compile(r"^(<doc [^\n]*>|</doc>)\n?", re.M)


def strip_doc_markers(text: str) -> str:
    """Remove the `<doc ...>` / `</doc>` lines that wrap each article in Wikipedia dumps."""
    return _DOC_MARKER.sub("", text)


def load_text(name_or_path: str) -> str:
    """A known text name (wiki, tiny, c4, code, technical, multilingual) or a UTF-8 file, markers stripped."""
    path = Path(name_or_path)
    if name_or_path in TEXT_NAMES:
        path = fetch(name_or_path)
    elif not path.exists():
        raise LutlmError(f"{name_or_path}: no such text file, and not a known text ({', '.join(TEXT_NAMES)})")
    return strip_doc_markers(read_text(path, TEXT_BYTES))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def windows(tokens: Sequence[int], size: int, count: int) -> list[list[int]]:
    if size < 2:
        raise LutlmError("a window needs at least 2 tokens")
    available = len(tokens) // size
    if count < 1 or count > available:
        raise LutlmError(f"asked for {count} windows of {size} tokens; the text has {len(tokens)} tokens ({available} windows)")
    return [list(tokens[i * size : (i + 1) * size]) for i in range(count)]


@dataclass
class PerplexityResult:
    ppl: float
    scored: int


def reference_nll(model: Reference) -> Callable[[list[int]], Sequence[float]]:
    """NLL of each token after the first of a window, by the numpy reference from an empty cache."""
    def nll(window: list[int]) -> Sequence[float]:
        logits = model.forward(window, model.new_cache(len(window)), all_logits=True)
        logp = log_softmax(logits[:-1])
        return -logp[np.arange(len(window) - 1), np.asarray(window[1:])]
    return nll


def perplexity(nll: Callable[[list[int]], Sequence[float]] | Reference, chunks: list[list[int]],
               progress: Callable[[int, float], None] | None = None) -> PerplexityResult:
    """exp of the mean NLL over every token after the first of each window; `progress(i, running_ppl)`.
    `nll` scores one window (the numpy reference by default, or the GPU runtime)."""
    if isinstance(nll, Reference):
        nll = reference_nll(nll)
    total, count = 0.0, 0
    for i, window in enumerate(chunks):
        values = nll(window)
        total += float(sum(float(v) for v in values))
        count += len(window) - 1
        if progress:
            progress(i, math.exp(total / count))
    return PerplexityResult(math.exp(total / count), count)

"""Model sources read into one Checkpoint: a GGUF file, a Hugging Face folder, or a quantised
checkpoint folder that `lutlm quantize` wrote. One reader a format, beside this dispatch; the
types they return are in `lutlm.checkpoint`."""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint import Checkpoint
from ..errors import LutlmError
from . import quantized
from .gguf import load_gguf
from .hf import load_hf


def load_checkpoint(source: str | Path, tensors: bool = True) -> Checkpoint:
    """Read a GGUF file, a Hugging Face folder or a quantised checkpoint into a validated Checkpoint.

    With `tensors=False` only the config, tokenizer and chat template are read (fast: no weights).
    """
    path = Path(source)
    if path.is_dir() and quantized.is_quantized(path):
        ckpt, _ = quantized.read(path, tensors)
    elif path.is_dir():
        ckpt = load_hf(path, tensors)
    elif os.path.lexists(path):  # a file, or something that is not one: the GGUF reader says which
        ckpt = load_gguf(path, tensors)
    else:
        raise LutlmError(f"{path}: no such file or directory")
    if tensors:
        ckpt.validate()
    return ckpt

"""A tiny random Llama compiled into real model packages, with its numpy reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lutlm.checkpoint import Checkpoint
from lutlm.intake import load_checkpoint
from lutlm.package import write
from lutlm.quant.pipeline import Request, quantize
from lutlm.reference import Reference
from runtime_py.api import LutLM
from runtime_py.engine import Engine
from tiny_llama import write_hf_folder

from kernel_harness import backend


def tiny_checkpoint(folder: Path) -> Checkpoint:
    write_hf_folder(folder)
    return load_checkpoint(folder)


def compile_package(ckpt: Checkpoint, out: Path, bits: str = "4", budget: float | None = None,
                    decode: str = "lut", group: int = 32, scale_bits: int = 16) -> Reference:
    """Quantise (round to nearest; mixed measures sensitivity on a fixed random window) and write
    the package; returns the numpy reference on the same quantised weights."""
    calib = [[(7 * i + 3) % ckpt.config.n_vocab for i in range(64)]] if bits == "mixed" else None
    req = Request(bits=bits, method="rtn", budget=budget, group=group, scale_bits=scale_bits)
    quantized, _, info = quantize(ckpt, req, calib)
    write(out, ckpt, quantized, info, decode=decode)
    tensors = dict(ckpt.tensors) | {n: q.dequantize() for n, q in quantized.items()}
    return Reference(Checkpoint(ckpt.config, tensors, ckpt.tokenizer))


def engine(package: Path, ctx: int | None = None) -> Engine:
    return LutLM.from_folder(str(package), backend(), ctx).engine


def penalized_greedy(model: Reference, prompt: list[int], penalty: float, n: int, n_ctx: int = 128) -> list[int]:
    """Greedy tokens with the repetition penalty (Hugging Face's: each id already in prompt or
    output has its logit divided by `penalty` if positive, multiplied if not), in numpy."""
    import numpy as np

    cache = model.new_cache(n_ctx)
    logits, seen, out = model.forward(prompt, cache), set(prompt), []
    for _ in range(n):
        adj = logits.astype(np.float64).copy()
        idx = sorted(seen)
        adj[idx] = np.where(adj[idx] > 0, adj[idx] / penalty, adj[idx] * penalty)
        out.append(int(np.argmax(adj)))
        seen.add(out[-1])
        logits = model.forward([out[-1]], cache)
    return out

"""Sequential GPTQ over a whole model: each block's linear layers are quantised in execution
order, and the Hessian of each is collected from activations that already flow through the
quantised layers before it (the standard GPTQ recipe). Calibration text never includes the
evaluation text."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..reference import Reference, rope_tables
from .format import QTensor, QuantSpec
from .gptq import GPTQOptions, Hessian, gptq_quantize

Progress = Callable[[str], None]


def _quantise(model: Reference, names: list[str], inputs: list[np.ndarray], plan: dict[str, QuantSpec],
              options: GPTQOptions, out: dict[str, QTensor]) -> None:
    """GPTQ for the layers `names` that share `inputs`, swapping their weights for the result."""
    names = [n for n in names if n in plan]
    if not names:
        return
    hessian = Hessian(inputs[0].shape[-1])
    for x in inputs:
        hessian.add(x)
    h = hessian.matrix()
    for name in names:
        q = gptq_quantize(model.w[name], h, plan[name], options, name)
        out[name] = q
        model.w[name] = q.dequantize()


def gptq_model(model: Reference, plan: dict[str, QuantSpec], windows: list[list[int]],
               options: GPTQOptions = GPTQOptions(), progress: Progress | None = None) -> dict[str, QTensor]:
    """Quantise every linear layer named in `plan` with GPTQ; `model.w` ends holding the dequantised weights."""
    c = model.config
    out: dict[str, QTensor] = {}
    n = len(windows[0])
    cos, sin = rope_tables(c, np.arange(n))
    xs = [model.embed(ids) for ids in windows]
    scratch_k = np.zeros((n, c.n_head_kv, c.head_dim), np.float32)
    scratch_v = np.zeros_like(scratch_k)
    for i, b in enumerate(model.blocks):
        hs = [model.attn_input(i, x) for x in xs]
        _quantise(model, [b.attn_q, b.attn_k, b.attn_v], hs, plan, options, out)
        atts = [model.attend(i, h, cos, sin, scratch_k, scratch_v, 0) for h in hs]
        _quantise(model, [b.attn_output], atts, plan, options, out)
        xs = [x + model.linear(b.attn_output, a) for x, a in zip(xs, atts)]
        hs = [model.ffn_input(i, x) for x in xs]
        _quantise(model, [b.ffn_gate, b.ffn_up], hs, plan, options, out)
        acts = [model.ffn_hidden(i, h) for h in hs]
        _quantise(model, [b.ffn_down], acts, plan, options, out)
        xs = [x + model.linear(b.ffn_down, a) for x, a in zip(xs, acts)]
        if progress:
            progress(f"block {i + 1}/{c.n_layer}")
    return out

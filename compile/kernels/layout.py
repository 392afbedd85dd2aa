"""The GPU layouts of a quantised weight, derived from the checkpoint's packed forms.

The checkpoint stores bit-planes row-major, (planes, rows, K/32), as `quant.packing` defines them.
The kernels want the row index fastest, so that invocation r and r+1 read adjacent words:
planes as (K/32, planes, rows), dense codes as (K/per_word, rows), and scale/minimum f16 pairs
as (K/G, rows). Pure transposes: the bits are the packing module's. With 8-bit scales a u32 holds
two groups' codes, bytes (scale, -minimum, scale, -minimum), as (ceil(K/G / 2), rows) (an odd last
group's word has zero high bytes), then one more row of words: each row's two f16 steps (scale
step low).
"""

from __future__ import annotations

import numpy as np

from ..quant.format import QTensor, StepGrid
from ..quant.packing import pack_bitplanes, pack_dense, pack_f16_pairs


def planes(q: QTensor) -> np.ndarray:
    return np.ascontiguousarray(pack_bitplanes(q.codes, q.spec.bits).transpose(2, 0, 1))


def dense(q: QTensor, bits: int) -> np.ndarray:
    """Codes `bits` wide (2, 4 or 8: a divisor of 32) per u32, (K * bits / 32, rows)."""
    return np.ascontiguousarray(pack_dense(q.codes, bits).T)


def scale_min(q: QTensor) -> np.ndarray:
    if q.steps is None:
        return np.ascontiguousarray(pack_f16_pairs(q.scale, q.minimum).T)
    codes = np.stack(StepGrid.of(q.steps).codes(q.scale, q.minimum), axis=-1).reshape(q.scale.shape[0], -1)
    steps = pack_f16_pairs(q.steps[:, 0], q.steps[:, 1])
    return np.ascontiguousarray(np.vstack([pack_dense(codes, 8).T, steps[None, :]]))

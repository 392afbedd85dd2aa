"""GPTQ (Frantar et al., 2022): quantise a weight matrix column by column, folding each column's
rounding error into the columns not yet quantised, weighted by the inverse Hessian of the layer's
inputs, so that the layer's output on calibration activations changes as little as possible.

Group parameters (scale, minimum) are fixed when the first column of a group is reached, from the
group's weights as updated so far; with act-order (columns by decreasing Hessian diagonal) groups
stay contiguous in the original column order, which is what the packed formats need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import LutlmError
from .format import QTensor, QuantSpec, StepGrid, grid_params, quantize_to_grid, search_grid


@dataclass(frozen=True)
class GPTQOptions:
    damp: float = 0.01  # fraction of the mean Hessian diagonal added to the diagonal
    act_order: bool = True
    block: int = 128  # columns per lazy batch update
    grid_search: bool = True  # per group, the Hessian-weighted best scale/minimum (else min-max)


class Hessian:
    """Running 2/n * sum(x x^T) of a layer's inputs."""

    def __init__(self, dim: int):
        self.h = np.zeros((dim, dim), np.float64)
        self.n = 0

    def add(self, x: np.ndarray) -> None:
        x = x.reshape(-1, x.shape[-1]).astype(np.float32, copy=False)
        self.h += (x.T @ x).astype(np.float64)
        self.n += len(x)

    def matrix(self) -> np.ndarray:
        if self.n == 0:
            raise LutlmError("no calibration activations reached this layer")
        return self.h * (2.0 / self.n)


def gptq_quantize(weight: np.ndarray, hessian: np.ndarray, spec: QuantSpec,
                  options: GPTQOptions = GPTQOptions(), name: str = "tensor") -> QTensor:
    spec.check_shape(weight.shape, name)
    rows, cols = weight.shape
    g = spec.group
    w = weight.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    perm = np.argsort(-np.diag(h), kind="stable") if options.act_order else np.arange(cols)
    inv_perm = np.argsort(perm)
    w, h = w[:, perm], h[perm][:, perm]
    h[np.diag_indices(cols)] += options.damp * np.mean(np.diag(h))
    try:
        hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper Cholesky factor of H^-1
    except np.linalg.LinAlgError:
        raise LutlmError(f"{name}: the calibration Hessian is not positive definite; raise the damping") from None

    n_groups = cols // g
    grid = None
    if spec.scale_bits == 8:  # each row's steps reach its min-max range before any error is folded in
        grid = StepGrid.fit(*grid_params(weight.astype(np.float32).reshape(rows, n_groups, g), spec))
    dtype = np.float16 if grid is None else np.float32
    scale = np.zeros((rows, n_groups), dtype)
    minimum = np.zeros((rows, n_groups), dtype)
    ready = np.zeros(n_groups, bool)
    codes = np.zeros((rows, cols), np.uint8)
    for b0 in range(0, cols, options.block):
        b1 = min(b0 + options.block, cols)
        wb = w[:, b0:b1].copy()
        errs = np.zeros_like(wb)
        hb = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = perm[b0 + i]
            grp = col // g
            if not ready[grp]:
                pos = inv_perm[grp * g : (grp + 1) * g]  # where the group's columns sit now
                values = np.empty((rows, g))
                inside = pos < b1
                values[:, inside] = wb[:, pos[inside] - b0]
                values[:, ~inside] = w[:, pos[~inside]]
                if options.grid_search:
                    params = search_grid(values, spec, np.diag(h)[pos], grid)
                else:
                    params = grid_params(values.astype(np.float32), spec)
                    params = params if grid is None else grid.snap(*params)
                scale[:, grp], minimum[:, grp] = params
                ready[grp] = True
            d = scale[:, grp].astype(np.float32)
            m = minimum[:, grp].astype(np.float32)
            q = quantize_to_grid(wb[:, i].astype(np.float32), d, m, spec.qmax)
            deq = q * d + m
            codes[:, b0 + i] = q
            err = (wb[:, i] - deq) / hb[i, i]
            wb[:, i:] -= np.outer(err, hb[i, i:])
            errs[:, i] = err
        w[:, b1:] -= errs @ hinv[b0:b1, b1:]
    return QTensor(spec, codes[:, inv_perm], scale, minimum, None if grid is None else grid.array())

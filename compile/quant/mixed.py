"""Mixed precision: spend a bits-per-weight budget where the model measurably needs it.

Sensitivity is measured, not guessed: for each linear tensor alone, quantise it (round-to-nearest
at the option nearest the budget) and measure the KL divergence of the model's next-token
distribution from the unquantised model's on a calibration window, restarting from the cached
input of that tensor's block. Other options are scaled by their weight rounding error relative
to the measured one (output error is quadratic in weight error). A greedy multiple-choice knapsack then upgrades
whichever tensor buys the most KL per extra bit until the budget is spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import LutlmError
from ..perplexity import log_softmax
from ..reference import Reference, rope_tables
from .format import QuantSpec, quantize_rtn

OPTIONS = tuple(QuantSpec(bits, group) for bits in (2, 3, 4) for group in (32, 64, 96, 192))
# With 8-bit scales a group's pair costs 16 bits instead of 32, so smaller groups become affordable
OPTIONS_D8 = tuple(QuantSpec(bits, group, scale_bits=8) for bits in (2, 3, 4) for group in (16, 32, 64, 96, 192))


def options_of(scale_bits: int) -> tuple[QuantSpec, ...]:
    """The formats mixed precision chooses among for f16 (16) or 8-bit scales."""
    return OPTIONS_D8 if scale_bits == 8 else OPTIONS


def options_for(name: str, shape: tuple[int, ...], options: tuple[QuantSpec, ...] = OPTIONS) -> list[QuantSpec]:
    """The options whose group size divides the tensor's input dimension."""
    valid = [spec for spec in options if shape[1] % spec.group == 0]
    if not valid:
        raise LutlmError(f"{name}: no group size among the options divides {shape[1]}")
    return valid


def check_budget(budget_bpw: float, shapes: dict[str, tuple[int, ...]],
                 options: tuple[QuantSpec, ...] = OPTIONS) -> None:
    """Fail unless the budget affords every tensor its cheapest option: checked from the shapes
    alone, before the minutes that measuring sensitivity takes."""
    total = sum(rows * cols for rows, cols in shapes.values())
    bits = sum(min(s.bpw_for(shape[1]) for s in options_for(n, shape, options)) * shape[0] * shape[1]
               for n, shape in shapes.items())
    _affordable(budget_bpw, bits, total)


def _affordable(budget_bpw: float, bits: float, total: int) -> None:
    if bits > budget_bpw * total + 1e-9:
        raise LutlmError(f"a budget of {budget_bpw} bits per weight is below the cheapest mix ({bits / total:.3f})")


@dataclass
class Sensitivity:
    name: str
    size: int
    kl: dict[QuantSpec, float]  # estimated KL divergence caused by quantising this tensor alone
    cols: int  # input dimension: 8-bit scales' row steps cost 32 / cols bits per weight

    def bpw(self, spec: QuantSpec) -> float:
        return spec.bpw_for(self.cols)


def _kl(ref_logp: np.ndarray, logits: np.ndarray) -> float:
    logp = log_softmax(logits)
    return float((np.exp(ref_logp) * (ref_logp - logp)).sum(axis=-1).mean())


def measure(model: Reference, names: list[str], window: list[int], budget_bpw: float,
            options: tuple[QuantSpec, ...] = OPTIONS,
            progress: Callable[[str], None] | None = None) -> list[Sensitivity]:
    """Per tensor, KL divergence when it alone is quantised; measured at the option nearest the budget."""
    c = model.config
    n = len(window)
    cos, sin = rope_tables(c, np.arange(n))
    cache = model.new_cache(n)
    xs = [model.embed(window)]
    for i in range(c.n_layer):
        xs.append(model.block(i, xs[-1], cos, sin, cache, 0))
    ref_logp = log_softmax(model.head(xs[-1]))
    block_of = {name: i for i, b in enumerate(model.blocks) for name in b.linear}
    result = []
    for k, name in enumerate(names):
        layer = block_of[name]
        original = model.w[name]
        valid = options_for(name, original.shape, options)
        probe = min(valid, key=lambda s: (abs(s.bpw - budget_bpw), s.bpw))
        errors = {}
        for spec in valid:
            deq = quantize_rtn(original, spec, name).dequantize()
            errors[spec] = float(np.mean((deq - original) ** 2))
            if spec == probe:
                model.w[name] = deq
        x = xs[layer]
        for i in range(layer, c.n_layer):
            x = model.block(i, x, cos, sin, cache, 0)
        kl = _kl(ref_logp, model.head(x))
        model.w[name] = original
        scale = kl / errors[probe] if errors[probe] > 0 else 0.0
        result.append(Sensitivity(name, original.size, {spec: errors[spec] * scale for spec in valid},
                                  original.shape[1]))
        if progress:
            progress(f"{k + 1}/{len(names)} {name}")
    return result


def allocate(sensitivities: list[Sensitivity], budget_bpw: float) -> dict[str, QuantSpec]:
    """Cheapest-first greedy: repeatedly take the upgrade with the best KL saved per bit added."""
    total = sum(s.size for s in sensitivities)
    choice = {s.name: min(s.kl, key=s.bpw) for s in sensitivities}
    spent = sum(s.size * s.bpw(choice[s.name]) for s in sensitivities)
    _affordable(budget_bpw, spent, total)
    by_name = {s.name: s for s in sensitivities}
    while True:
        best = None
        for name, current in choice.items():
            s = by_name[name]
            for spec in s.kl:
                extra = s.size * (s.bpw(spec) - s.bpw(current))
                gain = s.kl[current] - s.kl[spec]
                if extra <= 0 or gain <= 0 or spent + extra > budget_bpw * total + 1e-9:
                    continue
                ratio = gain / extra
                if best is None or ratio > best[0]:
                    best = (ratio, name, spec, extra)
        if best is None:
            return choice
        _, name, spec, extra = best
        choice[name] = spec
        spent += extra

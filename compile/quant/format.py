"""Group-wise quantised weights: what a code means, and the simplest way to choose codes.

Each output row is cut into groups of G consecutive input weights. A b-bit group stores codes
q in [0, 2^b) with an f16 scale and an f16 minimum, w = q * scale + min (llama.cpp's Q4_1 form:
a float minimum rather than an integer zero point, so requantising Q4_1 weights is exact).
Symmetric groups (8-bit embeddings) put the minimum at -2^(b-1) * scale, which makes
requantising llama.cpp's Q8_0 exact. Ternary groups store q in {0, 1, 2} with one f16 scale and
w = (q - 1) * scale (BitNet b1.58's {-1, 0, +1} times an absmean scale); two bit-planes.

With `scale_bits` 8 (llama.cpp's k-quants do the same at 6), a group's scale and minimum are
8-bit codes times one f16 step per row each: scale = a * step_s, minimum = -b * step_m (a, b in
0..255, so minimums are at most 0). That halves the 32 bits a group's f16 pair costs, which is
what makes groups of 16 affordable: 3-bit codes in groups of 16 cost about 4.05 bits per weight, those
in groups of 32 with f16 pairs 4.0, and measure much better (README).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import LutlmError

BITS = (2, 3, 4, 8)
GROUPS = (16, 32, 64, 96, 128, 192, 256)
SCALE_BITS = (16, 8)  # f16 per group, or 8-bit codes times an f16 step per row
STEP_CODES = 255


@dataclass(frozen=True)
class QuantSpec:
    bits: int  # storage bits per weight (ternary: 2)
    group: int
    ternary: bool = False
    symmetric: bool = False  # absmax grid centred on 0 (Q8_0-style); the minimum is -2^(b-1) * scale
    scale_bits: int = 16

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise LutlmError(f"bits must be one of {', '.join(map(str, BITS))} or t (ternary), not {self.bits}")
        if self.group not in GROUPS:
            raise LutlmError(f"group size must be one of {', '.join(map(str, GROUPS))}, not {self.group}")
        if self.ternary and (self.bits != 2 or self.symmetric):
            raise LutlmError("ternary weights are stored in 2 bit-planes")
        if self.scale_bits not in SCALE_BITS:
            raise LutlmError(f"scale bits must be 16 (f16) or 8 (8-bit codes times a step per row), not {self.scale_bits}")
        if self.scale_bits == 8 and (self.ternary or self.symmetric):
            raise LutlmError("8-bit scales are for asymmetric groups (scale and minimum), not ternary or symmetric ones")

    @classmethod
    def parse(cls, bits: str | int, group: int, scale_bits: int = 16) -> "QuantSpec":
        if str(bits) == "t":
            return cls(2, group, ternary=True, scale_bits=scale_bits)
        try:
            return cls(int(bits), group, scale_bits=scale_bits)
        except ValueError:
            raise LutlmError(f"bits must be 2, 3, 4, 8 or t, not {bits!r}") from None

    @property
    def qmax(self) -> int:
        return 2 if self.ternary else (1 << self.bits) - 1

    @property
    def bpw(self) -> float:
        """Bits per weight including the group's scale (and minimum unless ternary); 8-bit scales'
        two f16 steps per row add 32 / columns more, which `bpw_for` counts."""
        return self.bits + (16 if self.ternary else 2 * self.scale_bits) / self.group

    def bpw_for(self, cols: int) -> float:
        return self.bpw + (32 / cols if self.scale_bits == 8 else 0.0)

    @property
    def name(self) -> str:
        kind = "t" if self.ternary else ("s" if self.symmetric else "q") + str(self.bits)
        return f"{kind}g{self.group}" + ("d8" if self.scale_bits == 8 else "")

    def check_shape(self, shape: tuple[int, ...], tensor: str = "tensor") -> None:
        if len(shape) != 2 or shape[1] % self.group or shape[1] % 32:
            raise LutlmError(f"{tensor} of shape {shape}: the input dimension must be a multiple of "
                             f"the group size {self.group} (and of 32, for bit-plane packing)")


@dataclass
class QTensor:
    """Codes (rows, cols) uint8 and per-group scale and minimum (rows, cols / group): f16, or with
    8-bit scales f32 values that are exactly code * step, the steps in `steps` (rows, 2) f16."""

    spec: QuantSpec
    codes: np.ndarray
    scale: np.ndarray
    minimum: np.ndarray
    steps: np.ndarray | None = None

    def dequantize(self) -> np.ndarray:
        rows, cols = self.codes.shape
        g = self.spec.group
        q = self.codes.reshape(rows, cols // g, g).astype(np.float32)
        d = self.scale.astype(np.float32)[..., None]
        m = self.minimum.astype(np.float32)[..., None]
        return (d * q + m).reshape(rows, cols)


@dataclass(frozen=True)
class StepGrid:
    """The f16 steps of one tensor's 8-bit scales and minimums, one pair per row (rows,) each."""

    scale_step: np.ndarray
    min_step: np.ndarray

    @classmethod
    def fit(cls, scale: np.ndarray, minimum: np.ndarray) -> "StepGrid":
        """Steps that reach the largest scale and the most negative minimum of each row (rows, groups)."""
        def step(top: np.ndarray) -> np.ndarray:
            s = (top / STEP_CODES).astype(np.float16)
            s = np.where(s.astype(np.float32) * STEP_CODES < top, np.nextafter(s, np.float16(np.inf)), s)
            return s.astype(np.float32)
        return cls(step(np.max(scale, axis=-1).astype(np.float32)),
                   step(np.max(-np.minimum(minimum, 0), axis=-1).astype(np.float32)))

    def _steps(self, ndim: int) -> tuple[np.ndarray, np.ndarray]:
        """The steps shaped to broadcast over arrays (rows,) or (rows, groups)."""
        extra = (...,) + (None,) * (ndim - 1)
        return self.scale_step[extra], self.min_step[extra]

    def codes(self, scale: np.ndarray, minimum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The nearest 8-bit codes of scale and -minimum (minimums above 0 become 0)."""
        def code(v: np.ndarray, d: np.ndarray) -> np.ndarray:
            return np.clip(np.rint(v / np.where(d == 0, 1, d)), 0, STEP_CODES).astype(np.uint8)
        ds, dm = self._steps(scale.ndim)
        return code(scale, ds), code(-minimum, dm)

    def values(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scale and minimum (f32, exact) of codes `a` and `b`."""
        ds, dm = self._steps(a.ndim)
        return (a * ds).astype(np.float32), (-(b * dm)).astype(np.float32)

    def snap(self, scale: np.ndarray, minimum: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The nearest representable scale and minimum."""
        return self.values(*self.codes(scale, minimum))

    def array(self) -> np.ndarray:
        return np.stack([self.scale_step, self.min_step], axis=1).astype(np.float16)

    @classmethod
    def of(cls, steps: np.ndarray) -> "StepGrid":
        return cls(steps[:, 0].astype(np.float32), steps[:, 1].astype(np.float32))


def grid_params(w: np.ndarray, spec: QuantSpec, clip: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """f16 scale and minimum of each group; `w` is (..., group). `clip` < 1 shrinks the range."""
    if spec.ternary:
        scale = (np.abs(w).mean(axis=-1) * clip).astype(np.float16)
        return scale, -scale
    if spec.symmetric:
        half = 1 << (spec.bits - 1)
        scale = (np.abs(w).max(axis=-1) * clip / (half - 1)).astype(np.float16)
        return scale, (scale.astype(np.float32) * -half).astype(np.float16)
    lo, hi = w.min(axis=-1), w.max(axis=-1)
    if clip != 1.0:
        mid = (lo + hi) / 2
        lo, hi = mid + (lo - mid) * clip, mid + (hi - mid) * clip
    scale = ((hi - lo) / spec.qmax).astype(np.float16)
    return scale, lo.astype(np.float16)


CLIP_CANDIDATES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
TERNARY_SCALE_CANDIDATES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.35, 1.5, 1.7)  # multiples of the absmean


def search_grid(w: np.ndarray, spec: QuantSpec, importance: np.ndarray | None = None,
                grid: StepGrid | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scale/minimum per row of one group `w` (rows, group) minimising importance-weighted error.

    For each candidate range, codes are rounded, then scale and minimum are refitted to those
    codes by weighted least squares (as llama.cpp's k-quants and imatrix do), and the best fit
    after rounding to what is stored (f16, or `grid` for 8-bit scales) wins. `importance`
    (group,) is typically the Hessian diagonal.
    """
    store = grid.snap if grid is not None else lambda s, m: (s.astype(np.float16), m.astype(np.float16))
    w = w.astype(np.float32)
    h = np.ones(w.shape[1], np.float32) if importance is None else importance.astype(np.float32) + 1e-12
    best_err = np.full(w.shape[0], np.inf, np.float32)
    best = store(*grid_params(w, spec))
    for clip in TERNARY_SCALE_CANDIDATES if spec.ternary else CLIP_CANDIDATES:
        scale, minimum = store(*grid_params(w, spec, clip))
        q = quantize_to_grid(w, scale[:, None], minimum[:, None], spec.qmax).astype(np.float32)
        if spec.ternary:
            t = q - 1
            den = (h * t * t).sum(axis=1)
            s = np.where(den > 0, (h * t * w).sum(axis=1) / np.where(den > 0, den, 1), scale)
            scale = np.abs(s).astype(np.float16)
            minimum = -scale
        elif not spec.symmetric:
            a, b, c = (h * q * q).sum(1), (h * q).sum(1), h.sum()
            y1, y2 = (h * q * w).sum(1), (h * w).sum(1)
            det = a * c - b * b
            ok = det > 1e-12 * np.maximum(a * c, 1e-30)
            safe = np.where(ok, det, 1)
            s = np.where(ok, (c * y1 - b * y2) / safe, scale)
            m = np.where(ok, (a * y2 - b * y1) / safe, minimum)
            scale, minimum = store(np.maximum(s, 0), m)
        q = quantize_to_grid(w, scale[:, None], minimum[:, None], spec.qmax)
        deq = q * scale.astype(np.float32)[:, None] + minimum.astype(np.float32)[:, None]
        err = (h * (deq - w) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = (np.where(better, scale, best[0]), np.where(better, minimum, best[1]))
    return best


def quantize_to_grid(w: np.ndarray, scale: np.ndarray, minimum: np.ndarray, qmax: int) -> np.ndarray:
    """Nearest codes for `w` on the grid q * scale + minimum (broadcasting scale/minimum over w)."""
    d = scale.astype(np.float32)
    m = minimum.astype(np.float32)
    safe = np.where(d == 0, 1.0, d)
    q = np.rint((w - m) / safe)
    return np.clip(np.where(d == 0, 0, q), 0, qmax).astype(np.uint8)


def quantize_rtn(w: np.ndarray, spec: QuantSpec, name: str = "tensor") -> QTensor:
    """Round-to-nearest on the min-max (or absmean, for ternary) grid of each group."""
    spec.check_shape(w.shape, name)
    rows, cols = w.shape
    groups = w.astype(np.float32).reshape(rows, cols // spec.group, spec.group)
    scale, minimum = grid_params(groups, spec)
    steps = None
    if spec.scale_bits == 8:
        grid = StepGrid.fit(scale, minimum)
        scale, minimum = grid.snap(scale, minimum)
        steps = grid.array()
    codes = quantize_to_grid(groups, scale[..., None], minimum[..., None], spec.qmax)
    return QTensor(spec, codes.reshape(rows, cols), scale, minimum, steps)

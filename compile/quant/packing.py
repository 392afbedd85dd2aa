"""Packed layouts the WGSL kernels read, and their exact inverses.

- Bit-planes (the LUT kernels): plane j holds bit j of every code, 32 weights per u32 word, bit
  k % 32 of word k // 32 within a row. Shape (planes, rows, cols / 32).
- Dense codes (the dequantise baseline, MLC q4f16_1-style): floor(32 / b) codes per u32, code i of
  a word in bits [b*i, b*i + b). Shape (rows, ceil(cols / per_word)).
- f16 pairs: scale and minimum of a group in one u32 (scale in the low half), which WGSL's
  `unpack2x16float` splits without the shader-f16 feature.
"""

from __future__ import annotations

import numpy as np

from ..errors import LutlmError

_SHIFTS = np.arange(32, dtype=np.uint32)


def pack_bitplanes(codes: np.ndarray, planes: int) -> np.ndarray:
    rows, cols = codes.shape
    if cols % 32:
        raise LutlmError(f"bit-plane packing needs a multiple of 32 columns, not {cols}")
    if codes.size and int(codes.max()) >> planes:
        raise LutlmError(f"codes do not fit in {planes} bit-planes")
    c = codes.astype(np.uint32).reshape(rows, cols // 32, 32)
    return np.ascontiguousarray(np.stack([(((c >> j) & 1) << _SHIFTS).sum(axis=-1, dtype=np.uint32)
                                          for j in range(planes)]))


def unpack_bitplanes(planes: np.ndarray) -> np.ndarray:
    n, rows, words = planes.shape
    bits = (planes[..., None] >> _SHIFTS) & 1  # (planes, rows, words, 32)
    codes = sum(bits[j] << j for j in range(n))
    return codes.reshape(rows, words * 32).astype(np.uint8)


def pack_dense(codes: np.ndarray, bits: int) -> np.ndarray:
    rows, cols = codes.shape
    per = 32 // bits
    if codes.size and int(codes.max()) >> bits:
        raise LutlmError(f"codes do not fit in {bits} bits")
    padded = np.zeros((rows, -(-cols // per) * per), np.uint32)
    padded[:, :cols] = codes
    c = padded.reshape(rows, -1, per)
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    return np.ascontiguousarray((c << shifts).sum(axis=-1, dtype=np.uint32))


def unpack_dense(words: np.ndarray, bits: int, cols: int) -> np.ndarray:
    per = 32 // bits
    shifts = (np.arange(per, dtype=np.uint32) * bits)
    codes = (words[..., None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(words.shape[0], -1)[:, :cols].astype(np.uint8)


def pack_f16_pairs(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return low.astype(np.float16).view(np.uint16).astype(np.uint32) | (
        high.astype(np.float16).view(np.uint16).astype(np.uint32) << 16)


def unpack_f16_pairs(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low = (words & 0xFFFF).astype(np.uint16).view(np.float16)
    high = (words >> 16).astype(np.uint16).view(np.float16)
    return low, high

"""Workgroup tree reductions shared by the kernels that reduce across invocations."""

from __future__ import annotations

from typing import Any, Callable

from tvm.script import tirx as T


def tree(width: int, combine: Callable[[Any, Any], Any]) -> Any:
    """A TVMScript macro: fold red[0..width) into red[0] with `combine`, a barrier per halving
    (and one before, so that every invocation's red[tid] is written first)."""
    steps = width.bit_length() - 1

    @T.macro
    def reduce(red, tid):
        T.tvm_storage_sync("shared")
        for s in range(steps):
            if tid < (width >> (s + 1)):
                red[tid] = combine(red[tid], red[tid + (width >> (s + 1))])
            T.tvm_storage_sync("shared")
    return reduce


def add(a: Any, b: Any) -> Any:
    return a + b

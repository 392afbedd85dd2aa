"""Choosing the next token on the GPU, so a decode step reads back one u32 and nothing else.

Both kernels run as a single workgroup of WG invocations over the n logits, each invocation owning
a contiguous slice, combined by tree reductions in workgroup memory.

- argmax: the lowest index among the largest logits (greedy decoding).
- sample: temperature, then top-k, then top-p (nucleus) on what top-k kept, then an inverse-CDF
  draw in vocabulary order with a counter-based random number (seed, step), so a seeded run
  repeats exactly. Sorting 49152 logits on a GPU is slow; instead the top-k and top-p cut-offs
  are found by bisection on the probability threshold (count / mass of probabilities >= tau),
  which keeps exactly the set a sort would keep, up to ties and a 2^-30 resolution.
"""

from __future__ import annotations

from typing import Any

from tvm.script import tirx as T

from .reduce import add, tree

WG = 256
tree_max, tree_sum = tree(WG, T.max), tree(WG, add)
BISECT = 30


def _bisect(mass: bool) -> Any:
    """A TVMScript macro: raise the threshold cut[0] (bisecting [cut[0], cut[1]]) as far as the
    count (or, with `mass`, the probability mass) of probs >= threshold stays >= goal."""
    weight = (lambda p: p) if mass else (lambda p: T.float32(1))  # noqa: E731

    @T.macro
    def body(probs, red, cut, acc, lo, hi, tid, goal):
        for it in range(BISECT):
            cut[2] = (cut[0] + cut[1]) * T.float32(0.5)
            acc[0] = T.float32(0)
            for i in range(lo, hi):
                acc[0] = acc[0] + T.Select(probs[i] >= cut[2], weight(probs[i]), T.float32(0))
            red[tid] = acc[0]
            tree_sum(red, tid)
            acc[0] = red[0]
            if acc[0] >= goal:
                cut[0] = cut[2]
            else:
                cut[1] = cut[2]
            T.tvm_storage_sync("shared")
    return body


bisect_count, bisect_mass = _bisect(False), _bisect(True)


def _slice(n: Any, tid: Any) -> tuple[Any, Any]:
    per = (n + WG - 1) // WG
    return tid * per, T.min(tid * per + per, n)


def argmax() -> Any:
    def better(logits: Any, a: Any, b: Any, n: Any) -> Any:
        """Index a beats index b (n stands for "none"): larger logit, then lower index."""
        la, lb = logits[T.min(a, n - 1)], logits[T.min(b, n - 1)]
        return T.And(a < n, T.Or(T.Or(b >= n, la > lb), T.And(la == lb, a < b)))

    @T.prim_func
    def f(logits_h: T.handle, out_h: T.handle, n: T.int32):
        T.func_attr({"tirx.noalias": True})
        logits = T.match_buffer(logits_h, (n,), "float32")
        out = T.match_buffer(out_h, (1,), "int32")
        for bx in T.thread_binding(1, thread="blockIdx.x"):
            for tid in T.thread_binding(WG, thread="threadIdx.x"):
                idx = T.alloc_buffer((WG,), "int32", scope="shared")
                at = T.alloc_buffer((1,), "int32", scope="local")
                at[0] = n
                for i in range(_slice(n, tid)[0], _slice(n, tid)[1]):
                    if better(logits, i, at[0], n):
                        at[0] = i
                idx[tid] = at[0]
                T.tvm_storage_sync("shared")
                for s in range(8):
                    if tid < (WG >> (s + 1)):
                        idx[tid] = T.Select(better(logits, idx[tid + (WG >> (s + 1))], idx[tid], n),
                                            idx[tid + (WG >> (s + 1))], idx[tid])
                    T.tvm_storage_sync("shared")
                at[0] = idx[0]
                if tid == 0:
                    out[0] = T.Select(at[0] < n, at[0], 0)
    return f


def sample() -> Any:
    @T.prim_func
    def f(logits_h: T.handle, probs_h: T.handle, out_h: T.handle, n: T.int32, temperature: T.float32,
          top_k: T.int32, top_p: T.float32, seed: T.uint32, step: T.uint32):
        T.func_attr({"tirx.noalias": True})
        logits = T.match_buffer(logits_h, (n,), "float32")
        probs = T.match_buffer(probs_h, (n,), "float32")
        out = T.match_buffer(out_h, (1,), "int32")
        for bx in T.thread_binding(1, thread="blockIdx.x"):
            for tid in T.thread_binding(WG, thread="threadIdx.x"):
                red = T.alloc_buffer((WG,), "float32", scope="shared")
                cut = T.alloc_buffer((3,), "float32", scope="local")  # low, high, threshold
                acc = T.alloc_buffer((2,), "float32", scope="local")
                h = T.alloc_buffer((1,), "uint32", scope="local")
                lo = _slice(n, tid)[0]
                hi = _slice(n, tid)[1]
                # the largest logit
                acc[0] = T.float32(-3.4e38)
                for i in range(lo, hi):
                    acc[0] = T.max(acc[0], logits[i])
                red[tid] = acc[0]
                tree_max(red, tid)
                acc[1] = red[0]
                T.tvm_storage_sync("shared")
                # unnormalised probabilities, the largest exactly 1
                for i in range(lo, hi):
                    probs[i] = T.exp((logits[i] - acc[1]) / temperature)
                # top-k: the largest threshold that still keeps k tokens
                cut[0] = T.float32(0)
                cut[1] = T.float32(1)
                if top_k > 0 and top_k < n:
                    bisect_count(probs, red, cut, acc, lo, hi, tid, T.Cast("float32", top_k))
                # the mass top-k kept, then top-p: the largest threshold keeping top_p of it
                acc[0] = T.float32(0)
                for i in range(lo, hi):
                    acc[0] = acc[0] + T.Select(probs[i] >= cut[0], probs[i], T.float32(0))
                red[tid] = acc[0]
                tree_sum(red, tid)
                acc[1] = red[0] * top_p
                T.tvm_storage_sync("shared")
                cut[1] = T.float32(1)
                if top_p < T.float32(1):
                    bisect_mass(probs, red, cut, acc, lo, hi, tid, acc[1])
                # each slice's kept mass, then an inverse-CDF draw in vocabulary order
                acc[0] = T.float32(0)
                for i in range(lo, hi):
                    acc[0] = acc[0] + T.Select(probs[i] >= cut[0], probs[i], T.float32(0))
                red[tid] = acc[0]
                T.tvm_storage_sync("shared")
                # PCG-style hash of (seed, step): a uniform in [0, 1) with 24 bits
                h[0] = seed * T.uint32(747796405) + step * T.uint32(2891336453) + T.uint32(1)
                h[0] = ((h[0] >> ((h[0] >> T.uint32(28)) + T.uint32(4))) ^ h[0]) * T.uint32(277803737)
                h[0] = (h[0] >> T.uint32(22)) ^ h[0]
                acc[1] = T.float32(0)  # mass of the slices before this one
                cut[1] = T.float32(0)  # total kept mass
                for i in range(WG):
                    acc[1] = acc[1] + T.Select(i < tid, red[i], T.float32(0))
                    cut[1] = cut[1] + red[i]
                cut[2] = T.Cast("float32", h[0] >> T.uint32(8)) * T.float32(1.0 / (1 << 24)) * cut[1]
                if tid == 0:
                    out[0] = -1
                T.tvm_storage_sync("shared")
                if acc[1] <= cut[2] and cut[2] < acc[1] + acc[0]:
                    for i in range(lo, hi):
                        if probs[i] >= cut[0]:
                            acc[1] = acc[1] + probs[i]
                            if acc[1] > cut[2] and out[0] < 0:
                                out[0] = i
                T.tvm_storage_sync("shared")
                # rounding can leave the draw past the last kept token: take the most likely one
                if tid == 0 and out[0] < 0:
                    for i in range(n):
                        if probs[i] == T.float32(1) and out[0] < 0:
                            out[0] = i
    return f


def nll() -> Any:
    """Perplexity on the GPU: nll[t] = logsumexp(logits[t]) - logits[t, targets[t]] for m tokens,
    one workgroup per token, so scoring a window reads back m floats instead of m x n logits."""

    @T.prim_func
    def f(logits_h: T.handle, targets_h: T.handle, nll_h: T.handle, m: T.int32, n: T.int32):
        T.func_attr({"tirx.noalias": True})
        logits = T.match_buffer(logits_h, (m, n), "float32")
        targets = T.match_buffer(targets_h, (m,), "int32")
        out = T.match_buffer(nll_h, (m,), "float32")
        for t in T.thread_binding(m, thread="blockIdx.x"):
            for tid in T.thread_binding(WG, thread="threadIdx.x"):
                red = T.alloc_buffer((WG,), "float32", scope="shared")
                acc = T.alloc_buffer((2,), "float32", scope="local")
                acc[0] = T.float32(-3.4e38)
                for i in range(_slice(n, tid)[0], _slice(n, tid)[1]):
                    acc[0] = T.max(acc[0], logits[t, i])
                red[tid] = acc[0]
                tree_max(red, tid)
                acc[1] = red[0]
                T.tvm_storage_sync("shared")
                acc[0] = T.float32(0)
                for i in range(_slice(n, tid)[0], _slice(n, tid)[1]):
                    acc[0] = acc[0] + T.exp(logits[t, i] - acc[1])
                red[tid] = acc[0]
                tree_sum(red, tid)
                if tid == 0:
                    out[t] = T.log(red[0]) + acc[1] - logits[t, T.min(T.max(targets[t], 0), n - 1)]
    return f


def penalize() -> Any:
    """Repetition penalty (as in Hugging Face / CTRL): each distinct id in seen[0:count] gets its
    logit divided by `penalty` if positive, multiplied if not. The runtime keeps `seen` distinct.
    So does ids[0], the token this step runs, unless it is among them: the runtime submits a
    decode step before it has read back the token the step before chose, so `seen` can lack it."""

    @T.prim_func
    def f(logits_h: T.handle, seen_h: T.handle, ids_h: T.handle, n: T.int32, count: T.int32, penalty: T.float32):
        T.func_attr({"tirx.noalias": True})
        logits = T.match_buffer(logits_h, (n,), "float32")
        seen = T.match_buffer(seen_h, (count,), "int32")
        ids = T.match_buffer(ids_h, (1,), "int32")
        for bx in T.thread_binding((count + WG) // WG, thread="blockIdx.x"):  # count + 1 ids
            for tid in T.thread_binding(WG, thread="threadIdx.x"):
                i = bx * WG + tid
                tok = T.alloc_buffer((1,), "int32", scope="local")
                tok[0] = -1
                if i < count:
                    tok[0] = seen[i]
                elif i == count:
                    tok[0] = ids[0]
                    for j in range(count):
                        if seen[j] == ids[0]:
                            tok[0] = -1
                if tok[0] >= 0 and tok[0] < n:
                    logits[tok[0]] = T.Select(logits[tok[0]] > T.float32(0), logits[tok[0]] / penalty,
                                              logits[tok[0]] * penalty)
    return f

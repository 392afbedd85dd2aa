"""Weight matmuls as TIR: the T-MAC lookup-table GEMV, its dequantise baseline, and prefill GEMM.

GPU layouts (see `layout.py`): bit-planes as (K/32, planes, N) u32 and group scale/minimum as one
f16 pair per (K/G, N) u32, so that neighbouring invocations (one per output row) read neighbouring
words. Software WebGPU runs invocations as SIMD lanes of a CPU, where that is a vector load
instead of a gather; on a real GPU it is a coalesced read.

The LUT GEMV computes y_r = sum_groups scale * sum_j 2^j sum_k b_jk x_k + min * sum_k x_k: the
inner sums over four activations at a time come from a table of the 16 possible partial sums, so
the work per weight falls with the number of bit-planes instead of being a dequantise per weight.

With 8-bit scale and minimum codes (`quant.format`, scale_bits 8; groups of 16 always have them)
`sm` holds one word of two groups' codes, then a last row of per-row f16 steps; a row sums
code * (its group's part) and code * (its group's activation sum) apart and multiplies by the two
steps once at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tvm.script import tirx as T

from .subgroups import SHARE, broadcast, slot

ROWS = 64  # invocations per workgroup, one output row each
# The LUT GEMV: GEMV_ROWS invocations per workgroup, each owning GEMV_TILE rows (tx, tx + GEMV_ROWS,
# ...) that it works through group by group, so a group's tables (4 KiB for 32 inputs) serve all
# of them while likely still in the L1 cache (a row at a time sweeps the whole 74 KiB table of
# k=576, more than the 32 KiB L1 of this machine's cores). The table lookups, not the weight
# reads, are the GEMV's cost. 8 invocations of 4 rows measured faster than 16 of one row on both
# software adapters and no slower than 4 of 4 in Chromium, and 16 rows per workgroup had beaten 64.
# The runs (`lutlm bench step`, `lutlm bench model`) are in docs/kernels.md.
GEMV_ROWS = 8
GEMV_TILE = 4
# The prefill GEMM: GEMM_ROWS invocations per workgroup, each a tile of ROW_TILE rows x TOKENS
# tokens. Per input column an invocation loads TOKENS activations (SwiftShader pays a load per
# lane, more than a code's decode costs) and decodes ROW_TILE codes, so a tall tile of few tokens
# shares each activation load across many rows. Of the tiles tried, 16 rows x 8 tokens in
# workgroups of 16 was among the fastest in Chromium and well ahead of the 8 rows x 16 tokens in
# workgroups of 64 it replaced (`lutlm bench step --prefill 42`, docs/kernels.md). Fewer
# invocations per workgroup also waste fewer rows at n = 576 (512 rows per workgroup left 448 of
# 1024 idle).
TOKENS = 8
ROW_TILE = 16
GEMM_ROWS = 16


def sm_rows(k: int, group: int, scale_bits: int = 16) -> int:
    """Rows of a weight's `sm` buffer: an f16 scale/minimum word per group, or with 8-bit codes one
    word per two groups (the last one half empty if their number is odd) plus the row of steps."""
    return (k // group + 1) // 2 + 1 if scale_bits == 8 else k // group


def _check_scales(group: int, scale_bits: int) -> bool:
    """Whether the kernel reads 8-bit scale codes; groups of 16 have nothing else."""
    if group == 16 and scale_bits != 8:
        raise ValueError("groups of 16 carry 8-bit scales")
    return scale_bits == 8


def _byte(word: Any, i: int) -> Any:
    """Byte i of u32 `word` as f32 (through i32, one instruction on SwiftShader)."""
    return T.Cast("float32", T.Cast("int32", (word >> T.uint32(8 * i)) & T.uint32(255)))


def _f16(h: Any, high: bool = False) -> Any:
    """The f16 in the low (or high) 16 bits of u32 `h` as f32: WGSL's core unpack2x16float (no
    shader-f16 needed), one conversion instruction where bit manipulation took about fifteen.
    TVM has no such intrinsic, so the call names a helper that `emit` defines."""
    return T.call_pure_extern("float32", "lutlm_f16_hi" if high else "lutlm_f16_lo", h)


@dataclass(frozen=True)
class Table:
    """How activations are tabulated: `width` activations per table (4 is T-MAC's classic choice;
    8 halves the lookups per weight at 16x the table), `mirror` keeps only the half of the entries
    whose top weight bit is 0, the other half being their negatives (weights read as +-1);
    `dtype` float16 halves the table's bytes where the adapter has shader-f16 (sums stay f32);
    `span` activations per plain sum: 32, one per weight word, or 16 for groups of 16."""

    width: int = 8
    mirror: bool = False
    dtype: str = "float32"
    span: int = 32

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "float16" else 4

    @property
    def entries(self) -> int:
        return 1 << (self.width - (1 if self.mirror else 0))

    def size(self, k: int) -> int:
        """Elements: the entries of each of the k/width tables, then the sum of each `span` x."""
        return k // self.width * self.entries + k // self.span


def lut_table(k: int, tab: Table) -> Any:
    """Table build: entry p of table t is sum_i x[t*width + i] * (bit i of p) (mirror: times +-1),
    so a lookup by `width` bits of one bit-plane is the dot product of those activations with
    `width` one-bit weights. After the tables come the plain sums of each `span` activations
    (the minimum's term of a group)."""
    width, entries, tables, span = tab.width, tab.entries, k // tab.width, tab.span

    low = min(4, entries.bit_length() - 1)  # entry bits handled by one invocation's unrolled loop
    highs = entries >> low

    def term(bit: Any, xi: Any) -> Any:
        return T.Select(bit != 0, xi, -xi if tab.mirror else T.float32(0))

    def subset_sum(xs: Any, bits: Any, first: int, count: int) -> Any:
        """sum over i < count of term(bit i of `bits`, xs[first + i])."""
        total = T.float32(0)
        for i in range(count):
            total = total + term((bits >> i) & 1, xs[first + i])
        return total

    @T.prim_func
    def f(x_h: T.handle, table_h: T.handle, x0: T.int32):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (x0 + k,), "float32")  # the activations are x[x0 : x0 + k]
        table = T.match_buffer(table_h, (tab.size(k),), tab.dtype)
        for bx in T.thread_binding((tables * highs + ROWS - 1) // ROWS, thread="blockIdx.x"):
            for tx in T.thread_binding(ROWS, thread="threadIdx.x"):
                xs = T.alloc_buffer((width,), "float32", scope="local")
                high = T.alloc_buffer((1,), "float32", scope="local")
                u = bx * ROWS + tx  # entries (u % highs) << low ... + (1 << low) - 1 of table u // highs
                if u < tables * highs:
                    for i in T.unroll(width):
                        xs[i] = x[x0 + u // highs * width + i]
                    high[0] = subset_sum(xs, u % highs, low, width - low)
                    for lo in T.unroll(1 << low):
                        table[u // highs * entries + u % highs * (1 << low) + lo] = T.Cast(
                            tab.dtype, high[0] + subset_sum(xs, lo, 0, low))
                    if u % (highs * (span // width)) == 0:
                        high[0] = T.float32(0)
                        for i in range(span):
                            high[0] = high[0] + x[x0 + u // highs * width + i]
                        table[tables * entries + u // (highs * (span // width))] = T.Cast(tab.dtype, high[0])
    return f


def lut_gemv(k: int, planes: int, group: int, tab: Table, scale_bits: int = 16) -> Any:
    """y[n] = W x by table lookup over `planes` bit-planes; n (output rows) is a runtime size.
    Each invocation owns GEMV_TILE rows and takes them in turn within each group, so the group's
    tables are looked up for all of them together; the group's activation sum is read once for all.
    Each weight word and scale/min pair is loaded once into a local: TVM's WGSL repeats a load at
    every use, and neither Tint nor SwiftShader merges them (each is a gather on SwiftShader)."""
    width, entries, tables = tab.width, tab.entries, k // tab.width
    gw, per = max(group, 32) // 32, 32 // tab.width
    spans = 32 // tab.span  # activation sums per weight word
    d8 = _check_scales(group, scale_bits)
    if group == 16 and tab.span != 16:
        raise ValueError("groups of 16 need a table with a sum per 16 activations")
    mask = (1 << width) - 1
    # mirror: sum b*x = (S + sum x) / 2 with S the +-1 lookup, so the sum of x gets (2^planes - 1) / 2
    xs_weight = ((1 << planes) - 1) / 2 if tab.mirror else 0.0
    part_weight = 0.5 if tab.mirror else 1.0

    def lookup(table: Any, base: Any, word: Any, s: int, j: int) -> Any:
        """2^j times the entry of table `base` picked by bits [width*s, width*s + width) of `word`."""
        idx = (word >> T.uint32(width * s)) & T.uint32(mask)
        if not tab.mirror:
            return T.float32(1 << j) * T.Cast("float32", table[base + T.Cast("int32", idx)])
        top = idx >> T.uint32(width - 1)
        e = T.Cast("int32", (idx ^ (top * T.uint32(mask))) & T.uint32(entries - 1))
        return T.Select(top != T.uint32(0), T.float32(-(1 << j)), T.float32(1 << j)) * T.Cast("float32", table[base + e])

    span = GEMV_ROWS * GEMV_TILE  # rows per workgroup

    def row(bx: Any, tx: Any, t: int) -> Any:
        """Row t of invocation tx of workgroup bx: an invocation's rows are GEMV_ROWS apart, so
        neighbouring invocations still read neighbouring words."""
        return bx * span + t * GEMV_ROWS + tx

    def src(bx: Any, tx: Any, t: int, n: Any) -> Any:
        """The row that row t reads: past the last row, the last row (its result is not stored)."""
        return T.min(row(bx, tx, t), n - 1)

    @T.prim_func
    def f(table_h: T.handle, w_h: T.handle, sm_h: T.handle, y_h: T.handle, n: T.int32, y0: T.int32):
        T.func_attr({"tirx.noalias": True})
        table = T.match_buffer(table_h, (tab.size(k),), tab.dtype)
        w = T.match_buffer(w_h, (k // 32, planes, n), "uint32")
        sm = T.match_buffer(sm_h, (sm_rows(k, group, scale_bits), n), "uint32")
        y = T.match_buffer(y_h, (y0 + n,), "float32")  # rows land at y[y0 : y0 + n]
        for bx in T.thread_binding((n + span - 1) // span, thread="blockIdx.x"):
            for tx in T.thread_binding(GEMV_ROWS, thread="threadIdx.x"):
                acc = T.alloc_buffer((2 * GEMV_TILE,), "float32", scope="local")  # d8: code-weighted parts, sums
                part = T.alloc_buffer((1,), "float32", scope="local")
                xsum = T.alloc_buffer((2,), "float32", scope="local")  # a group's activation sum (g16: two)
                words = T.alloc_buffer((planes,), "uint32", scope="local")
                smw = T.alloc_buffer((1,), "uint32", scope="local")
                for t in T.unroll(2 * GEMV_TILE):
                    acc[t] = T.float32(0)
                if group == 16:
                    for v in range(k // 32):
                        for h in T.unroll(2):
                            xsum[h] = T.Cast("float32", table[tables * entries + v * 2 + h])
                        for t in T.unroll(GEMV_TILE):
                            for j in T.unroll(planes):
                                words[j] = w[v, j, src(bx, tx, t, n)]
                            smw[0] = sm[v, src(bx, tx, t, n)]
                            for h in T.unroll(2):
                                part[0] = T.float32(0)
                                for j in T.unroll(planes):
                                    for s in T.unroll(per // 2):
                                        part[0] = part[0] + lookup(table, (v * per + h * (per // 2) + s) * entries,
                                                                   words[j] >> T.Cast("uint32", h * (per // 2) * width), s, j)
                                acc[2 * t] = acc[2 * t] + _byte(smw[0] >> T.Cast("uint32", h * 16), 0) * (
                                    T.float32(part_weight) * part[0] + T.float32(xs_weight) * xsum[h])
                                acc[2 * t + 1] = acc[2 * t + 1] + _byte(smw[0] >> T.Cast("uint32", h * 16), 1) * xsum[h]
                else:
                    for g in range(k // group):
                        xsum[0] = T.float32(0)
                        for v in range(gw):
                            for i in T.unroll(spans):
                                xsum[0] = xsum[0] + T.Cast("float32", table[tables * entries + (g * gw + v) * spans + i])
                        for t in T.unroll(GEMV_TILE):
                            part[0] = T.float32(0)
                            for v in range(gw):
                                for j in T.unroll(planes):
                                    words[j] = w[g * gw + v, j, src(bx, tx, t, n)]
                                for j in T.unroll(planes):
                                    for s in T.unroll(per):
                                        part[0] = part[0] + lookup(table, ((g * gw + v) * per + s) * entries, words[j], s, j)
                            if d8:
                                smw[0] = sm[g // 2, src(bx, tx, t, n)] >> T.Cast("uint32", g % 2 * 16)
                                acc[2 * t] = acc[2 * t] + _byte(smw[0], 0) * (T.float32(part_weight) * part[0] + T.float32(xs_weight) * xsum[0])
                                acc[2 * t + 1] = acc[2 * t + 1] + _byte(smw[0], 1) * xsum[0]
                            else:
                                smw[0] = sm[g, src(bx, tx, t, n)]
                                acc[2 * t] = acc[2 * t] + _f16(smw[0]) * (T.float32(part_weight) * part[0] + T.float32(xs_weight) * xsum[0]) \
                                    + _f16(smw[0], high=True) * xsum[0]
                for t in T.unroll(GEMV_TILE):
                    if row(bx, tx, t) < n:
                        if d8:
                            smw[0] = sm[sm_rows(k, group, scale_bits) - 1, row(bx, tx, t)]
                            y[y0 + row(bx, tx, t)] = _f16(smw[0]) * acc[2 * t] - _f16(smw[0], high=True) * acc[2 * t + 1]
                        else:
                            y[y0 + row(bx, tx, t)] = acc[2 * t]
    return f


def _pairwise(terms: list[Any]) -> Any:
    """The sum of `terms` as a balanced tree: independent adds instead of one serial chain."""
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]


def dequant_gemv(k: int, bits: int, group: int, tile: int = 1) -> Any:
    """The baseline: decode each b-bit code from a dense word (32/b codes per u32, MLC q4f16_1
    style) and multiply; same group arithmetic as the LUT kernel, so only the inner loop differs.
    `tile` > 1 gives each invocation that many rows, so each activation load serves `tile` rows.
    A word's products are added as a tree before they reach the row's sum (independent adds, not
    one serial chain), and codes become floats through i32 (one instruction where Subzero's u32
    conversion takes six): faster on SwiftShader, the same on lavapipe. Activations shared
    through subgroups as in `gemm` measured no faster here: each of a word's loads already serves
    `tile` rows. (Timings of both: docs/kernels.md.)"""
    per = 32 // bits
    mask = (1 << bits) - 1
    span = ROWS * tile

    @T.prim_func
    def f(x_h: T.handle, w_h: T.handle, sm_h: T.handle, y_h: T.handle, n: T.int32, x0: T.int32, y0: T.int32):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (x0 + k,), "float32")  # the activations are x[x0 : x0 + k]
        w = T.match_buffer(w_h, (k // per, n), "uint32")
        sm = T.match_buffer(sm_h, (k // group, n), "uint32")
        y = T.match_buffer(y_h, (y0 + n,), "float32")
        for bx in T.thread_binding((n + span - 1) // span, thread="blockIdx.x"):
            for tx in T.thread_binding(ROWS, thread="threadIdx.x"):
                acc = T.alloc_buffer((tile,), "float32", scope="local")
                part = T.alloc_buffer((tile,), "float32", scope="local")
                words = T.alloc_buffer((tile,), "uint32", scope="local")  # a code word, then a scale/min pair
                xv = T.alloc_buffer((per,), "float32", scope="local")  # the word's activations
                xsum = T.alloc_buffer((1,), "float32", scope="local")  # sum of the group's x
                for i in T.unroll(tile):
                    acc[i] = T.float32(0)
                for g in range(k // group):
                    xsum[0] = T.float32(0)
                    for i in T.unroll(tile):
                        part[i] = T.float32(0)
                    for v in range(group // per):
                        for i in T.unroll(tile):
                            words[i] = w[g * (group // per) + v, T.min(bx * span + i * ROWS + tx, n - 1)]
                        for s in T.unroll(per):
                            xv[s] = x[x0 + g * group + v * per + s]
                        xsum[0] = xsum[0] + _pairwise([xv[s] for s in range(per)])
                        for i in T.unroll(tile):
                            part[i] = part[i] + _pairwise([
                                T.Cast("float32", T.Cast("int32", (words[i] >> T.uint32(bits * s)) & T.uint32(mask))) * xv[s]
                                for s in range(per)])
                    for i in T.unroll(tile):
                        words[i] = sm[g, T.min(bx * span + i * ROWS + tx, n - 1)]
                        acc[i] = acc[i] + _f16(words[i]) * part[i] + _f16(words[i], high=True) * xsum[0]
                for i in T.unroll(tile):
                    if bx * span + i * ROWS + tx < n:
                        y[y0 + bx * span + i * ROWS + tx] = acc[i]
    return f


def gemm(k: int, planes: int, group: int, dense: bool = False, scale_bits: int = 16, subgroups: bool = False) -> Any:
    """Prefill: y[m, n] = x[m, :] . W[n, :] for m tokens. Each invocation owns a register tile of
    ROW_TILE rows x TOKENS tokens: per input column it loads TOKENS activations and decodes
    ROW_TILE weights for ROW_TILE * TOKENS multiply-adds. (Software WebGPU pays per load per
    invocation, so loads per multiply-add is the figure that matters.) Weights are `planes`
    bit-planes (at most 4), or with `dense` codes `planes` bits wide, 32/planes per u32: either
    way each 32 inputs of a row take `planes` words. Bit-planes are turned into 4-bit fields eight
    weights at a time (one bit-spread per plane), so each weight costs a shift and a mask instead
    of one per plane. The eight inputs of a field are unrolled: SwiftShader pays a loop iteration
    dearly (as a loop of eight the GEMM measured slower there; lavapipe is indifferent). Codes
    become floats through i32, as in `dequant_gemv` (faster on SwiftShader). 8-bit scale codes
    become a scale and minimum once per group, in groups of 16 afresh for each eight inputs.
    `subgroups`: each of SHARE lanes loads TOKENS / SHARE of a column's activations and broadcasts
    them (see `subgroups`), a quarter of the loads SwiftShader would pay per lane. (Timings of
    these choices: docs/kernels.md.)"""
    if planes > 4 and not dense:
        raise ValueError(f"the prefill GEMM reads at most 4 bit-planes, not {planes}: wider codes are stored dense")
    d8 = _check_scales(group, scale_bits)
    gw = max(group, 32) // 32
    per = 32 // planes

    def spread(byte: Any) -> Any:
        """Bit i of the low byte of `byte` moved to bit 4i."""
        v = byte & T.uint32(0xFF)
        v = (v | (v << T.uint32(12))) & T.uint32(0x000F000F)
        v = (v | (v << T.uint32(6))) & T.uint32(0x03030303)
        return (v | (v << T.uint32(3))) & T.uint32(0x11111111)

    def code(words: Any, nib: Any, r: int, q: Any, s: Any) -> Any:
        """The code of input 8q + s of the current 32, row r of the tile."""
        if dense:
            i = q * 8 + s
            return (words[r * planes + i // per] >> T.Cast("uint32", i % per * planes)) & T.uint32((1 << planes) - 1)
        return (nib[r] >> T.Cast("uint32", s * 4)) & T.uint32(15)
    rows_per_group = GEMM_ROWS * ROW_TILE

    @T.prim_func
    def f(x_h: T.handle, w_h: T.handle, sm_h: T.handle, y_h: T.handle, m: T.int32, n: T.int32,
          ldy: T.int32, y0: T.int32):
        T.func_attr({"tirx.noalias": True})
        x = T.match_buffer(x_h, (m, k), "float32")
        w = T.match_buffer(w_h, (k // 32, planes, n), "uint32")  # dense: the same words, (k // per, n)
        sm = T.match_buffer(sm_h, (sm_rows(k, group, scale_bits), n), "uint32")
        y = T.match_buffer(y_h, (m * ldy,), "float32")  # token t's rows land at y[t*ldy + y0 : ... + n]
        for by in T.thread_binding((m + TOKENS - 1) // TOKENS, thread="blockIdx.y"):
            for bx in T.thread_binding((n + rows_per_group - 1) // rows_per_group, thread="blockIdx.x"):
                for tx in T.thread_binding(GEMM_ROWS, thread="threadIdx.x"):
                    acc = T.alloc_buffer((ROW_TILE * TOKENS,), "float32", scope="local")
                    words = T.alloc_buffer((ROW_TILE * planes,), "uint32", scope="local")
                    scale = T.alloc_buffer((ROW_TILE * 2,), "float32", scope="local")
                    steps = T.alloc_buffer((ROW_TILE * 2,), "float32", scope="local")  # d8
                    smw = T.alloc_buffer((ROW_TILE,), "uint32", scope="local")  # d8: a word of codes
                    wv = T.alloc_buffer((ROW_TILE,), "float32", scope="local")
                    nib = T.alloc_buffer((ROW_TILE,), "uint32", scope="local")  # 8 codes in 4-bit fields
                    xv = T.alloc_buffer((TOKENS,), "float32", scope="local")
                    own = T.alloc_buffer((TOKENS // SHARE,), "float32", scope="local")  # subgroups: this lane's loads
                    for a in T.unroll(ROW_TILE * TOKENS):
                        acc[a] = T.float32(0)
                    if d8:
                        for r in T.unroll(ROW_TILE):
                            smw[r] = sm[sm_rows(k, group, 8) - 1, T.min(bx * rows_per_group + r * GEMM_ROWS + tx, n - 1)]
                            steps[2 * r] = _f16(smw[r])
                            steps[2 * r + 1] = -_f16(smw[r], high=True)
                    for g in range(k // (gw * 32)):
                        for r in T.unroll(ROW_TILE):
                            if group == 16:  # two groups' codes; the scales are taken per eight inputs
                                smw[r] = sm[g, T.min(bx * rows_per_group + r * GEMM_ROWS + tx, n - 1)]
                            elif d8:
                                smw[r] = sm[g // 2, T.min(bx * rows_per_group + r * GEMM_ROWS + tx, n - 1)] >> T.Cast("uint32", g % 2 * 16)
                                scale[2 * r] = _byte(smw[r], 0) * steps[2 * r]
                                scale[2 * r + 1] = _byte(smw[r], 1) * steps[2 * r + 1]
                            else:
                                scale[2 * r] = _f16(sm[g, T.min(bx * rows_per_group + r * GEMM_ROWS + tx, n - 1)])
                                scale[2 * r + 1] = _f16(sm[g, T.min(bx * rows_per_group + r * GEMM_ROWS + tx, n - 1)], high=True)
                        for v in range(gw):
                            for r in T.unroll(ROW_TILE):
                                for j in T.unroll(planes):
                                    words[r * planes + j] = w[g * gw + v, j, T.min(bx * rows_per_group + r * GEMM_ROWS + tx, n - 1)]
                            for q in range(4):  # eight inputs at a time
                                if group == 16:
                                    for r in T.unroll(ROW_TILE):
                                        scale[2 * r] = _byte(smw[r] >> T.Cast("uint32", q // 2 * 16), 0) * steps[2 * r]
                                        scale[2 * r + 1] = _byte(smw[r] >> T.Cast("uint32", q // 2 * 16), 1) * steps[2 * r + 1]
                                if not dense:
                                    for r in T.unroll(ROW_TILE):
                                        nib[r] = T.uint32(0)
                                        for j in T.unroll(planes):
                                            nib[r] = nib[r] | (spread(words[r * planes + j] >> T.Cast("uint32", q * 8)) << T.uint32(j))
                                for s in T.unroll(8):
                                    if subgroups:
                                        for h in T.unroll(TOKENS // SHARE):
                                            own[h] = x[T.min(by * TOKENS + h * SHARE + slot(), m - 1),
                                                       (g * gw + v) * 32 + q * 8 + s]
                                        for t in T.unroll(TOKENS):
                                            xv[t] = broadcast(own[t // SHARE], t % SHARE)
                                    else:
                                        for t in T.unroll(TOKENS):
                                            xv[t] = x[T.min(by * TOKENS + t, m - 1), (g * gw + v) * 32 + q * 8 + s]
                                    for r in T.unroll(ROW_TILE):
                                        wv[r] = T.Cast("float32", T.Cast("int32", code(words, nib, r, q, s))) * scale[2 * r] + scale[2 * r + 1]
                                        for t in T.unroll(TOKENS):
                                            acc[r * TOKENS + t] = acc[r * TOKENS + t] + wv[r] * xv[t]
                    for r in T.unroll(ROW_TILE):
                        for t in T.unroll(TOKENS):
                            if by * TOKENS + t < m and bx * rows_per_group + r * GEMM_ROWS + tx < n:
                                y[(by * TOKENS + t) * ldy + y0 + bx * rows_per_group + r * GEMM_ROWS + tx] = acc[r * TOKENS + t]
    return f


def stream_read(words: int) -> Any:
    """The practical ceiling for the GEMVs: each row's `words` u32 read in the same column-major
    layout and folded with xor, nothing else (the benchmark's copy kernel)."""

    @T.prim_func
    def f(w_h: T.handle, y_h: T.handle, n: T.int32):
        T.func_attr({"tirx.noalias": True})
        w = T.match_buffer(w_h, (words, n), "uint32")
        y = T.match_buffer(y_h, (n,), "float32")
        for bx in T.thread_binding((n + ROWS - 1) // ROWS, thread="blockIdx.x"):
            for tx in T.thread_binding(ROWS, thread="threadIdx.x"):
                acc = T.alloc_buffer((1,), "uint32", scope="local")
                r = bx * ROWS + tx
                if r < n:
                    acc[0] = T.uint32(0)
                    for i in range(words):
                        acc[0] = acc[0] ^ w[i, r]
                    y[r] = T.Cast("float32", acc[0])
    return f

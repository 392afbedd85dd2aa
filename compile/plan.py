"""The dispatch plan of a Llama-family decoder: which kernels run, on which buffers, with which sizes.

A plan is data (the runtime executes it, it knows nothing of Llama): each step names a kernel, the
buffers bound in the kernel's binding order, and its uniform values as expressions of the runtime
variables m (tokens in this call), pos (position of the first), ctx (cache capacity) and the
sampling parameters. Buffers are weights (the package's tensors) or activations whose byte sizes
are expressions of ctx and chunk (the most tokens one prefill call takes).

Plans: `prefill` (m tokens through every block, GEMMs), `decode` (one token, LUT GEMVs), both
ending with the final norm in `h`; `head` (the last token's logits), optionally `penalty`
(repetition penalty on the ids in `seen`), then `greedy` or `sample` (the next id into ids[0],
the only value read back); `score` (every token's logits and their NLL
against `targets`, for perplexity).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .checkpoint import ModelConfig
from .kernels import attention, layers, matmul, sampling, subgroups
from .kernels.emit import emit
from .models import architecture
from .quant.format import QuantSpec

TABLE = matmul.Table()
TABLE16 = matmul.Table(span=16)  # any group of 16 in the package: activation sums per 16 inputs
CHUNK = 64
DECODE = {"lut": 0, "dequant": 1, "dequant8": 8}  # decode matmul kinds; dequant: rows per invocation


DENSE_TILE = 8  # rows per invocation of the dequantise GEMV that dense-only (8-bit) tensors decode with


def dense_bits(spec: QuantSpec) -> int:
    """Code width of the dense (dequantise) layout: 3-bit codes travel in 4-bit fields."""
    return spec.bits if spec.bits in (2, 4, 8) else 4


def dense_only(spec: QuantSpec) -> bool:
    """8-bit codes (the embedding / output head) are stored dense and dequantised, never as
    bit-planes: a bit-serial lookup costs one table read per plane per 8 weights, i.e. one per
    weight at 8 bits, and the 8-row dequantise GEMV does the 49152 x 576 head 2.5x faster on
    SwiftShader (89 vs 220 ms) and lavapipe (65 vs 162 ms)."""
    return spec.bits >= 8


def stored(spec: QuantSpec) -> str:
    """The code layout a tensor's GPU buffer NAME.<layout> holds for its GEMM and gather."""
    return "dense" if dense_only(spec) else "planes"


@dataclass
class Plan:
    config: ModelConfig
    specs: dict[str, QuantSpec]  # GPU tensor base name -> spec (NAME.planes or NAME.dense, and NAME.sm)
    shapes: dict[str, tuple[int, int]]  # GPU tensor base name -> (rows, cols)
    decode: str = "lut"  # how decode multiplies: LUT GEMV, or dequantise (NAME.dense) as a baseline
    tab: matmul.Table = TABLE
    kernels: dict[str, dict[str, Any]] = field(default_factory=dict)
    buffers: dict[str, str] = field(default_factory=dict)
    plans: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def kernel(self, name: str, builder: Callable[..., Any], *args: Any, cpu: dict[str, Any]) -> str:
        """Kernel NAME from `builder(*args)`, with `cpu`: the CPU backend's op that computes the
        same (its name and integer parameters; docs/package-format.md, "Kernels")."""
        if name not in self.kernels:
            self.kernels[name] = {**emit(builder(*args), name).to_json(), "cpu": cpu}
        return name

    def subgroup_kernel(self, name: str, builder: Callable[..., Any], *args: Any, cpu: dict[str, Any]) -> str:
        """`builder`'s subgroup variant as NAME_sg, with the plain kernel NAME as its `fallback`,
        which a runtime whose adapter lacks the `subgroups` feature binds instead."""
        base = self.kernel(name, builder, *args, cpu=cpu)
        fast = name + "_sg"
        if fast not in self.kernels:
            self.kernels[fast] = {**emit(builder(*args, subgroups=True), fast).to_json(), "fallback": base, "cpu": cpu}
        return fast

    @property
    def _span(self) -> str:
        """Kernel-name suffix of the table's activation sums (none for the usual 32)."""
        return "" if self.tab.span == 32 else f"_s{self.tab.span}"

    def step(self, plan: str, kid: str, bind: dict[str, str], sizes: dict[str, Any]) -> None:
        """Uniform values: numbers as they are, anything else as an expression string."""
        meta = self.kernels[kid]
        missing = [b["name"] for b in meta["bindings"] if b["name"] not in bind]
        if missing:
            raise ValueError(f"{kid}: no buffer for {missing}")
        uniforms = {f: sizes[f] if isinstance(sizes[f], (int, float)) else str(sizes[f])
                    for f, _ in meta["uniforms"] if f != "packGridDimX"}
        self.plans.setdefault(plan, []).append(
            {"kernel": kid, "bind": [bind[b["name"]] for b in meta["bindings"]], "sizes": uniforms})

    def table(self, plan: str, x: str, k: int, x0: Any = 0) -> str:
        kid = self.kernel(f"lut_table_k{k}{self._span}", matmul.lut_table, k, self.tab,
                          cpu={"op": "lut_table", "k": k, "span": self.tab.span})
        self.step(plan, kid, {"x": x, "table": f"table{k}"}, {"x0": x0})
        return f"table{k}"

    def matmul(self, plan: str, weight: str, x: str, y: str, y0: int, ldy: int, table_ready: bool) -> None:
        """y[.., y0 : y0 + n] = x @ weight^T: a LUT GEMV for decode, the GEMM for prefill."""
        spec, (n, k) = self.specs[weight], self.shapes[weight]
        if plan == "prefill" or plan == "score":
            codes = stored(spec)
            kid = self.subgroup_kernel(f"gemm_k{k}_{codes[0]}{spec.bits}_g{spec.group}{_d8(spec)}", matmul.gemm, k,
                                       spec.bits, spec.group, codes == "dense", spec.scale_bits,
                                       cpu={"op": "gemm", "k": k, "bits": spec.bits, "group": spec.group,
                                            "dense": int(codes == "dense"), "scale_bits": spec.scale_bits,
                                            "span": self.tab.span})
            self.step(plan, kid, {"w": f"{weight}.{codes}", "sm": weight + ".sm", "x": x, "y": y},
                      {"m": "m", "n": n, "ldy": ldy, "y0": y0})
        else:
            self.gemv(plan, weight, x, y, y0, 0, table_ready)

    def gemv(self, plan: str, weight: str, x: str, y: str, y0: int, x0: Any, table_ready: bool) -> None:
        spec, (n, k) = self.specs[weight], self.shapes[weight]
        if self.decode != "lut" or dense_only(spec):
            bits, tile = dense_bits(spec), DENSE_TILE if self.decode == "lut" else DECODE[self.decode]
            kid = self.kernel(f"dequant_gemv_k{k}_b{bits}_g{spec.group}_r{tile}", matmul.dequant_gemv, k, bits,
                              spec.group, tile, cpu={"op": "dense_gemv", "k": k, "bits": bits, "group": spec.group})
            self.step(plan, kid, {"x": x, "w": weight + ".dense", "sm": weight + ".sm", "y": y},
                      {"n": n, "x0": x0, "y0": y0})
            return
        if not table_ready:
            self.table(plan, x, k, x0)
        kid = self.kernel(f"lut_gemv_k{k}_p{spec.bits}_g{spec.group}{_d8(spec)}{self._span}", matmul.lut_gemv, k,
                          spec.bits, spec.group, self.tab, spec.scale_bits,
                          cpu={"op": "lut_gemv", "k": k, "bits": spec.bits, "group": spec.group,
                               "scale_bits": spec.scale_bits, "span": self.tab.span})
        self.step(plan, kid, {"w": weight + ".planes", "sm": weight + ".sm", "table": f"table{k}", "y": y},
                  {"n": n, "y0": y0})


def _d8(spec: QuantSpec) -> str:
    """Kernel-name suffix of 8-bit scale codes, as in the format's name (q3g16d8)."""
    return "d8" if spec.scale_bits == 8 else ""


def fused_groups(config: ModelConfig, specs: dict[str, QuantSpec], layer: int) -> dict[str, list[str]]:
    """Matmuls that read the same activations and share a spec run as one (rows concatenated)."""
    b = architecture(config.architecture).block(layer)
    groups: dict[str, list[str]] = {}
    for fused, parts in b.fused.items():
        if len({specs[n] for n in parts}) == 1:
            groups[fused] = list(parts)
        else:
            groups.update({n: [n] for n in parts})
    for name in (b.attn_output, b.ffn_down):
        groups[name] = [name]
    return groups


def _present(specs: dict[str, QuantSpec], fused: str, parts: tuple[str, ...]) -> tuple[str, ...]:
    """The GPU weights that compute `parts`: their fused matrix, if the package has one."""
    return (fused,) if fused in specs else parts


def build(config: ModelConfig, specs: dict[str, QuantSpec], shapes: dict[str, tuple[int, int]],
          head: str, decode: str = "lut") -> Plan:
    """`specs`/`shapes` are per GPU weight (fused names included); `head` names the output head."""
    c, arch = config, architecture(config.architecture)
    e, ff, hd, kvd = c.n_embd, c.n_ff, c.head_dim, c.n_head_kv * c.head_dim
    qd = c.n_head * hd
    qkv_w = qd + 2 * kvd
    splits = attention.splits("ctx")  # decode attention's splits of the cache
    p = Plan(c, specs, shapes=shapes, decode=decode,
             tab=TABLE16 if any(s.group == 16 for s in specs.values()) else TABLE)
    p.buffers = {
        "ids": "4 * chunk", "targets": "4 * chunk", "nll": "4 * chunk",
        "x": f"4 * chunk * {e}", "h": f"4 * chunk * {e}", "o": f"4 * chunk * {e}",
        "attn": f"4 * chunk * {qd}", "qkv": f"4 * chunk * {qkv_w}", "gu": f"4 * chunk * {2 * ff}",
        "act": f"4 * chunk * {ff}",
        "logits": f"4 * chunk * {c.n_vocab}", "part": f"4 * {c.n_head * hd} * {splits}", "stat": f"8 * {c.n_head} * {splits}",
        "probs": f"4 * {c.n_vocab}",
        "rope": f"4 * ctx * {c.n_rot // 2} * 2", "seen": "4 * ctx",
    }
    for k in sorted({shape[1] for shape in shapes.values()}):
        p.buffers[f"table{k}"] = str(p.tab.itemsize * p.tab.size(k))
    for layer in range(c.n_layer):
        p.buffers[f"kc.{layer}"] = p.buffers[f"vc.{layer}"] = f"4 * {kvd} * ctx"

    emb = arch.EMBEDDING
    codes = stored(specs[emb])
    embed = p.kernel(f"embed_k{e}_{codes[0]}{specs[emb].bits}_g{specs[emb].group}", layers.embed, e,
                     specs[emb].bits, specs[emb].group, codes == "dense",
                     cpu={"op": "embed", "k": e, "bits": specs[emb].bits, "group": specs[emb].group,
                          "dense": int(codes == "dense")})
    norm = p.kernel(f"rms_norm_d{e}", layers.rms_norm, e, cpu={"op": "rms_norm", "d": e, "residual": 0})
    heads = {"heads": c.n_head, "kv_heads": c.n_head_kv, "head_dim": hd}
    rope = p.kernel(f"rope_append_q{c.n_head}_k{c.n_head_kv}", layers.rope_append, c.n_head, c.n_head_kv, hd, c.n_rot, qkv_w,
                    cpu={"op": "rope_append", **heads, "n_rot": c.n_rot, "stride": qkv_w})
    # prefill: one invocation per (kv head, token), a subgroup variant where head_dim % 4 == 0; decode:
    # splits of the cache, then their merge (four dimensions per load, so head_dim % 4 == 0; otherwise
    # the prefill kernel serves decode too)
    prefill_attention = p.kernel if hd % subgroups.SHARE else p.subgroup_kernel
    attends = {"prefill": [prefill_attention("attention", attention.attention, c.n_head, c.n_head_kv, hd, qkv_w,
                                             cpu={"op": "attention", **heads, "q_stride": qkv_w})]}
    attends["decode"] = attends["prefill"] if hd % 4 else [
        p.kernel(f"attention_split_q{c.n_head}_k{c.n_head_kv}", attention.split, c.n_head, c.n_head_kv, hd, qkv_w,
                 cpu={"op": "attention_split", **heads, "q_stride": qkv_w}),
        p.kernel(f"attention_merge_q{c.n_head}", attention.merge, c.n_head, hd,
                 cpu={"op": "attention_merge", "heads": c.n_head, "head_dim": hd})]
    glu = p.kernel(f"swiglu_f{ff}", layers.swiglu, ff, cpu={"op": "swiglu", "ff": ff})
    add_norm = p.kernel(f"add_rms_norm_d{e}", layers.rms_norm, e, True, cpu={"op": "rms_norm", "d": e, "residual": 1})
    eps = float(c.rms_eps)
    run = {"m": "m", "pos": "pos", "ctx": "ctx"}
    for plan in ("prefill", "decode"):
        m = "m" if plan == "prefill" else 1
        p.step(plan, embed, {"ids": "ids", "w": f"{emb}.{codes}", "sm": emb + ".sm", "x": "x"},
               {"m": m, "n": c.n_vocab})
        p.step(plan, norm, {"x": "x", "weight": arch.block(0).attn_norm, "out": "h"}, {"m": m, "eps": eps})
        for layer in range(c.n_layer):
            b = arch.block(layer)
            offset, first = 0, True
            for name in _present(specs, b.qkv, b.fused[b.qkv]):
                p.matmul(plan, name, "h", "qkv", offset, qkv_w, table_ready=not first)
                offset, first = offset + shapes[name][0], False
            sizes = {**run, "m": m}
            p.step(plan, rope, {"qkv": "qkv", "cs": "rope", "kc": f"kc.{layer}", "vc": f"vc.{layer}"}, sizes)
            for kid in attends[plan]:
                p.step(plan, kid, {"q": "qkv", "kc": f"kc.{layer}", "vc": f"vc.{layer}", "part": "part", "stat": "stat",
                                  "out": "attn"},
                       sizes)
            p.matmul(plan, b.attn_output, "attn", "o", 0, e, table_ready=False)
            p.step(plan, add_norm, {"x": "x", "y": "o", "weight": b.ffn_norm, "out": "h"}, {"m": m, "eps": eps})
            offset, first = 0, True
            for name in _present(specs, b.gate_up, b.fused[b.gate_up]):
                p.matmul(plan, name, "h", "gu", offset, 2 * ff, table_ready=not first)
                offset, first = offset + shapes[name][0], False
            p.step(plan, glu, {"gu": "gu", "act": "act"}, {"m": m})
            p.matmul(plan, b.ffn_down, "act", "o", 0, e, table_ready=False)
            after = arch.block(layer + 1).attn_norm if layer + 1 < c.n_layer else arch.OUTPUT_NORM
            p.step(plan, add_norm, {"x": "x", "y": "o", "weight": after, "out": "h"}, {"m": m, "eps": eps})

    # the last token's logits (x0 picks its row of h), then the next id into ids[0]
    p.gemv("head", head, "h", "logits", 0, f"(m - 1) * {e}", table_ready=False)
    p.step("penalty", p.kernel("penalize", sampling.penalize, cpu={"op": "penalize"}), {"logits": "logits", "seen": "seen", "ids": "ids"},
           {"n": c.n_vocab, "count": "seen_count", "penalty": "penalty"})
    p.step("greedy", p.kernel("argmax", sampling.argmax, cpu={"op": "argmax"}), {"logits": "logits", "out": "ids"}, {"n": c.n_vocab})
    p.step("sample", p.kernel("sample", sampling.sample, cpu={"op": "sample"}), {"logits": "logits", "probs": "probs", "out": "ids"},
           {"n": c.n_vocab, "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
            "seed": "seed", "step": "step"})
    p.matmul("score", head, "h", "logits", 0, c.n_vocab, table_ready=False)
    p.step("score", p.kernel("nll", sampling.nll, cpu={"op": "nll"}), {"logits": "logits", "targets": "targets", "out": "nll"},
           {"m": "m", "n": c.n_vocab})
    return p

"""`lutlm export onnx`: the same quantised weights as an ONNX decoder folder that transformers.js
(onnxruntime-web) loads, so that the peer benchmark compares engines, not weights.

The graph follows transformers.js's decoder contract: inputs `input_ids`, `attention_mask`,
`position_ids` and `past_key_values.{i}.key/value` (batch, kv heads, past, head dim); outputs
`logits` and `present.{i}.key/value`. Two weight forms:
- `q4`: every linear layer as com.microsoft MatMulNBits (4-bit container, block = the group size)
  with float zero points, so w = (q - zp) * scale reproduces lutlm's w = q * scale + min exactly
  for 2, 3 and 4-bit codes and ternary;
- `fp32`: the dequantised weights as plain MatMul.
The embedding is stored once (fp32, dequantised from lutlm's 8- or 4-bit codes) and serves as the
tied output head through Gemm(transB=1). RoPE rotates adjacent pairs, as lutlm's GGUF order does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .atomic import OutputKind
from .checkpoint import Checkpoint
from .errors import LutlmError
from .models import architecture
from .package import compiler_digest
from .quant.format import QTensor

DTYPES = {"q4": "model_q4.onnx", "fp32": "model.onnx"}
EXPORT_FORMAT = "lutlm-onnx-export"
OUTPUT = OutputKind("ONNX export", "lutlm-export.json", EXPORT_FORMAT,
                    frozenset({"onnx", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                               "lutlm-export.json"}))
# what runtime_py's chat template does for a model without one
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
OPSET = 17
IR_VERSION = 8  # opset 17's; onnxruntime-web reads up to the IR version of its release


class _Graph:
    """A tiny ONNX graph builder: every op returns its output name."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def const(self, value: np.ndarray | list | float, name: str | None = None) -> str:
        from onnx import numpy_helper

        self._n += 1
        name = name or f"c{self._n}"
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, kind: str, *inputs: str, domain: str = "", outputs: int = 1, name: str | None = None,
           **attrs: Any) -> Any:
        from onnx import helper

        self._n += 1
        outs = [name] if name and outputs == 1 else [f"{kind.lower()}{self._n}_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(kind, list(inputs), outs, domain=domain or None, **attrs))
        return outs[0] if outputs == 1 else outs

    def ints(self, *values: int) -> str:
        return self.const(np.array(values, np.int64))


def _matmulnbits(g: _Graph, x: str, q: QTensor, name: str) -> str:
    """y = x @ dequant(q).T with MatMulNBits; codes up to 4 bits ride in the 4-bit container."""
    rows, cols = q.codes.shape
    block = q.spec.group
    if q.spec.bits > 4 or block < 16 or block & (block - 1):
        raise LutlmError(f"{name}: {q.spec.name} does not fit MatMulNBits (at most 4 bits, power-of-two "
                         "groups of 16 or more); export with --dtype fp32")
    codes = q.codes.reshape(rows, cols // block, block).astype(np.uint8).copy()
    d = q.scale.astype(np.float32).copy()
    m = q.minimum.astype(np.float32)
    # w = q*d + m = (q - zp)*d with zp = -m/d; a zero scale means a constant group: codes 1, zp 0, scale m
    flat = d == 0
    codes[flat] = 1
    d[flat] = m[flat]
    zp = np.where(flat, 0.0, -m / np.where(flat, 1.0, d)).astype(np.float32)
    packed = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)  # low nibble = even element
    return g.op("MatMulNBits", x, g.const(packed, name + ".qweight"), g.const(d.reshape(-1), name + ".scales"),
                g.const(zp.reshape(-1), name + ".zero_points"), domain="com.microsoft",
                K=cols, N=rows, bits=4, block_size=block)


def _linear(g: _Graph, x: str, name: str, weights: dict[str, np.ndarray], quantized: dict[str, QTensor],
            dtype: str) -> str:
    if dtype == "q4" and name in quantized:
        return _matmulnbits(g, x, quantized[name], name)
    return g.op("MatMul", x, g.const(np.ascontiguousarray(weights[name].T), name))


def _rms_norm(g: _Graph, x: str, weight: np.ndarray, eps: float, name: str) -> str:
    ms = g.op("ReduceMean", g.op("Mul", x, x), axes=[-1], keepdims=1)
    inv = g.op("Reciprocal", g.op("Sqrt", g.op("Add", ms, g.const(np.float32(eps)))))
    return g.op("Mul", g.op("Mul", x, inv), g.const(weight.astype(np.float32), name))


def _rope(g: _Graph, x: str, cos: str, sin: str, n_rot: int, head_dim: int) -> str:
    """Rotate adjacent pairs (2i, 2i+1) of the first n_rot dims of x (batch, heads, seq, head_dim)."""
    rot = x if n_rot == head_dim else g.op("Slice", x, g.ints(0), g.ints(n_rot), g.ints(3))
    pairs = g.op("Reshape", rot, g.ints(0, 0, 0, n_rot // 2, 2))
    a = g.op("Slice", pairs, g.ints(0), g.ints(1), g.ints(4))
    b = g.op("Slice", pairs, g.ints(1), g.ints(2), g.ints(4))
    out = g.op("Concat", g.op("Sub", g.op("Mul", a, cos), g.op("Mul", b, sin)),
               g.op("Add", g.op("Mul", a, sin), g.op("Mul", b, cos)), axis=4)
    out = g.op("Reshape", out, g.ints(0, 0, 0, n_rot))
    if n_rot == head_dim:
        return out
    return g.op("Concat", out, g.op("Slice", x, g.ints(n_rot), g.ints(head_dim), g.ints(3)), axis=3)


def build_model(ckpt: Checkpoint, quantized: dict[str, QTensor], dtype: str) -> Any:
    """The ONNX ModelProto of the decoder with its KV cache."""
    from onnx import TensorProto, helper

    if dtype not in DTYPES:
        raise LutlmError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    c, arch = ckpt.config, architecture(ckpt.config.architecture)
    weights = dict(ckpt.tensors) | {n: q.dequantize() for n, q in quantized.items()}
    g = _Graph()
    hd, nh, kvh = c.head_dim, c.n_head, c.n_head_kv
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch", "total"]),
              helper.make_tensor_value_info("position_ids", i64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", "seq", c.n_vocab])]

    # RoPE tables gathered by position: (batch, 1, seq, n_rot/2, 1)
    inv_freq = c.rope_theta ** (-np.arange(0, c.n_rot, 2, dtype=np.float64) / c.n_rot)
    angles = np.arange(c.n_ctx, dtype=np.float64)[:, None] * inv_freq[None, :]
    pos = "position_ids"
    cos = g.op("Unsqueeze", g.op("Gather", g.const(np.cos(angles).astype(np.float32), "rope.cos"), pos), g.ints(1, 4))
    sin = g.op("Unsqueeze", g.op("Gather", g.const(np.sin(angles).astype(np.float32), "rope.sin"), pos), g.ints(1, 4))
    # allowed[b, 0, s, t] = key t is not after query s (index past + s) and attention_mask[b, t]
    total = g.op("Gather", g.op("Shape", "attention_mask"), g.const(np.int64(1)), axis=0)
    seq = g.op("Gather", g.op("Shape", "input_ids"), g.const(np.int64(1)), axis=0)
    one = g.const(np.int64(1))
    keys = g.op("Range", g.const(np.int64(0)), total, one)
    queries = g.op("Range", g.op("Sub", total, seq), total, one)
    causal = g.op("LessOrEqual", keys, g.op("Unsqueeze", queries, g.ints(1)))
    padded = g.op("Unsqueeze", g.op("Cast", "attention_mask", to=TensorProto.BOOL), g.ints(1, 2))
    allowed = g.op("And", causal, padded)
    masked = g.const(np.float32(-1e30))

    embedding = g.const(weights[arch.EMBEDDING].astype(np.float32), arch.EMBEDDING)
    x = g.op("Gather", embedding, "input_ids")
    scale = g.const(np.float32(1 / math.sqrt(hd)))
    for i in range(c.n_layer):
        b = arch.block(i)
        h = _rms_norm(g, x, weights[b.attn_norm], c.rms_eps, b.attn_norm)

        def heads(name: str, n: int) -> str:
            y = _linear(g, h, name, weights, quantized, dtype)
            return g.op("Transpose", g.op("Reshape", y, g.ints(0, 0, n, hd)), perm=[0, 2, 1, 3])

        q = g.op("Mul", _rope(g, heads(b.attn_q, nh), cos, sin, c.n_rot, hd), scale)
        k_new = _rope(g, heads(b.attn_k, kvh), cos, sin, c.n_rot, hd)
        v_new = heads(b.attn_v, kvh)
        cache = []
        for kind, new in (("key", k_new), ("value", v_new)):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32, ["batch", kvh, "past", hd]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32, ["batch", kvh, "total", hd]))
            cache.append(g.op("Concat", f"past_key_values.{i}.{kind}", new, axis=2, name=f"present.{i}.{kind}"))
        k, v = cache
        # grouped-query attention without repeating K/V: the group's query heads become rows
        qg = g.op("Reshape", q, g.ints(0, kvh, -1, hd))
        scores = g.op("Reshape", g.op("MatMul", qg, g.op("Transpose", k, perm=[0, 1, 3, 2])), g.ints(0, nh, -1, 0))
        probs = g.op("Softmax", g.op("Where", allowed, scores, masked), axis=-1)
        att = g.op("MatMul", g.op("Reshape", probs, g.ints(0, kvh, -1, 0)), v)
        att = g.op("Reshape", g.op("Transpose", g.op("Reshape", att, g.ints(0, nh, -1, hd)), perm=[0, 2, 1, 3]),
                   g.ints(0, 0, nh * hd))
        x = g.op("Add", x, _linear(g, att, b.attn_output, weights, quantized, dtype))
        h = _rms_norm(g, x, weights[b.ffn_norm], c.rms_eps, b.ffn_norm)
        gate = _linear(g, h, b.ffn_gate, weights, quantized, dtype)
        up = _linear(g, h, b.ffn_up, weights, quantized, dtype)
        act = g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up)
        x = g.op("Add", x, _linear(g, act, b.ffn_down, weights, quantized, dtype))

    h = g.op("Reshape", _rms_norm(g, x, weights[arch.OUTPUT_NORM], c.rms_eps, arch.OUTPUT_NORM), g.ints(-1, c.n_embd))
    head = embedding if c.tied_embeddings else g.const(weights[arch.OUTPUT].astype(np.float32), arch.OUTPUT)
    shape = g.op("Concat", g.op("Shape", "input_ids"), g.ints(c.n_vocab), axis=0)
    g.op("Reshape", g.op("Gemm", h, head, transB=1), shape, name="logits")

    graph = helper.make_graph(g.nodes, "lutlm-decoder", inputs, outputs, g.inits)
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, producer_name="lutlm", ir_version=IR_VERSION)


def hf_config(ckpt: Checkpoint, dtype: str) -> dict[str, Any]:
    c, arch = ckpt.config, architecture(ckpt.config.architecture)
    return {"model_type": arch.HF_MODEL_TYPE, "architectures": [arch.HF_CLASS], "hidden_size": c.n_embd,
            "intermediate_size": c.n_ff, "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head,
            "num_key_value_heads": c.n_head_kv, "head_dim": c.head_dim, "vocab_size": c.n_vocab,
            "max_position_embeddings": c.n_ctx, "rope_theta": c.rope_theta, "rms_norm_eps": c.rms_eps,
            "tie_word_embeddings": c.tied_embeddings, "bos_token_id": c.bos_id, "eos_token_id": c.eos_id,
            "transformers.js_config": {"dtype": dtype, "use_external_data_format": False}}


def export(out: Path, ckpt: Checkpoint, quantized: dict[str, QTensor], dtype: str,
           progress: Callable[[str], None] = lambda msg: None) -> Path:
    """Write config.json, generation_config.json, tokenizer files and onnx/<model> atomically."""
    import onnx

    OUTPUT.check_output(out)
    progress("building the graph")
    model = build_model(ckpt, quantized, dtype)
    vocab = ckpt.tokenizer.get("added_tokens", [])
    token = {t["id"]: t["content"] for t in vocab}
    with OUTPUT.replacing(out) as tmp:
        (tmp / "onnx").mkdir(parents=True)
        progress("writing")
        onnx.save_model(model, str(tmp / "onnx" / DTYPES[dtype]))
        (tmp / "config.json").write_text(json.dumps(hf_config(ckpt, dtype), indent=1))
        (tmp / "generation_config.json").write_text(json.dumps(
            {"bos_token_id": ckpt.config.bos_id, "eos_token_id": ckpt.config.eos_id}))
        (tmp / "tokenizer.json").write_text(json.dumps(ckpt.tokenizer, ensure_ascii=False))
        tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": ckpt.config.add_bos,
                   "bos_token": token.get(ckpt.config.bos_id), "eos_token": token.get(ckpt.config.eos_id),
                   "chat_template": ckpt.chat_template or CHATML, "model_max_length": ckpt.config.n_ctx}
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, ensure_ascii=False, indent=1))
        (tmp / "lutlm-export.json").write_text(json.dumps({"format": EXPORT_FORMAT, "source": Path(ckpt.source).name, "dtype": dtype, "compiler": compiler_digest()}))
    return out

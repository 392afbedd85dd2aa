"""End-to-end tuning of group scales and minimums (PEQA, EfficientQAT's E2E-QP): the codes GPTQ
chose stay fixed, and every group's scale and minimum, with the RMSNorm gains (Norm Tweaking), are
trained with Adam so that the quantised model's next-token distribution matches the source model's
(KL divergence) on calibration text.

GPTQ minimises each layer's own output error; what it cannot see is how errors add up through 30
blocks. Training the few per-group parameters against the model's output fixes part of that
without changing the stored format or the kernels. numpy has no autograd, so the backward pass
of the reference forward is written out here; `tests/test_tune.py` checks it against finite
differences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import LutlmError
from ..reference import Reference, apply_rope, rope_tables, softmax
from .format import QTensor, StepGrid

Progress = Callable[[str], None]


LR_SCHEDULE = "cosine from lr to 0 over all steps"  # recorded with the options (they hold only lr)


@dataclass(frozen=True)
class TuneOptions:
    epochs: int = 2
    lr: float = 6e-4  # first Adam step, relative to each tensor's mean |scale| (a norm's mean |gain|); cosine to 0
    top_k: int = 256  # the source model's probabilities kept per position (the rest as one tail)
    norms: bool = True  # train the RMSNorm gains too (stored as f32, so they cost no bits)


@dataclass
class Teacher:
    """The source model's most likely next tokens (n, k) and their probabilities at each position
    of a window. Keeping k of them instead of the whole vocabulary bounds the memory:
    k = 256 over 32 windows of 512 tokens is 32 MiB, where all of SmolLM2's 49152 took 1.5 GiB."""

    ids: np.ndarray
    probs: np.ndarray


class _Group:
    """One quantised tensor's fixed codes and trainable fp32 scale and minimum."""

    def __init__(self, q: QTensor):
        rows, cols = q.codes.shape
        self.spec, self.shape = q.spec, (rows, cols // q.spec.group, q.spec.group)
        codes = q.codes.reshape(self.shape).astype(np.float32)
        self.codes = codes - 1.0 if q.spec.ternary else codes  # ternary: w = (q - 1) * scale
        self.scale = q.scale.astype(np.float32)
        self.minimum = q.minimum.astype(np.float32)
        self.steps = q.steps  # 8-bit scales: the row steps stay, the codes follow the masters

    def weight(self) -> np.ndarray:
        """The weight as stored: scale and minimum rounded to f16 or to their 8-bit grid (the fp32
        masters keep training, or steps smaller than half a stored step would be lost)."""
        scale, minimum = self.stored()
        w = self.codes * scale[..., None].astype(np.float32)
        if not self.spec.ternary:
            w = w + minimum[..., None].astype(np.float32)
        return w.reshape(self.shape[0], -1)

    def grads(self, dw: np.ndarray) -> list[np.ndarray]:
        """Gradients of the parameters() from the weight's gradient."""
        dw = dw.reshape(self.shape)
        ds = np.einsum("rgi,rgi->rg", dw, self.codes)
        if self.spec.symmetric:
            return [ds - (1 << (self.spec.bits - 1)) * dw.sum(-1)]
        return [ds] if self.spec.ternary else [ds, dw.sum(-1)]

    def unit(self) -> float:
        return float(np.mean(np.abs(self.scale)))

    def params(self) -> list[np.ndarray]:
        """The minimum is tied to the scale in ternary and symmetric groups."""
        return [self.scale] if self.spec.ternary or self.spec.symmetric else [self.scale, self.minimum]

    def stored(self) -> tuple[np.ndarray, np.ndarray]:
        if self.steps is not None:
            return StepGrid.of(self.steps).snap(self.scale, self.minimum)
        scale = np.maximum(self.scale, 0).astype(np.float16)
        if self.spec.symmetric:
            return scale, (scale.astype(np.float32) * -(1 << (self.spec.bits - 1))).astype(np.float16)
        return scale, (-scale if self.spec.ternary else self.minimum.astype(np.float16))

    def qtensor(self) -> QTensor:
        codes = (self.codes + (1 if self.spec.ternary else 0)).astype(np.uint8).reshape(self.shape[0], -1)
        return QTensor(self.spec, codes, *self.stored(), self.steps)


class _Gain:
    """An RMSNorm's gain vector, trained as it is stored (f32). Gains scale every input column of
    the layers after the norm, which per-row group scales cannot do (Norm Tweaking, Li et al. 2023)."""

    def __init__(self, gain: np.ndarray):
        self.gain = gain.astype(np.float32, copy=True)  # a copy: the source checkpoint may share the array

    def unit(self) -> float:
        return float(np.mean(np.abs(self.gain)))

    def params(self) -> list[np.ndarray]:
        return [self.gain]

    def grads(self, d: np.ndarray) -> list[np.ndarray]:
        return [d]

    def weight(self) -> np.ndarray:
        return self.gain


def _rms(x: np.ndarray, eps: float) -> np.ndarray:
    return 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def _rms_back(x: np.ndarray, r: np.ndarray, gain: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Gradient of y = x * r * gain (r = rms(x)^-1) with respect to x."""
    u = dy * gain
    return r * u - x * (r ** 3) * np.mean(u * x, axis=-1, keepdims=True)


def _gain_back(x: np.ndarray, r: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Gradient of y = x * r * gain with respect to the gain, summed over tokens."""
    return (dy * x * r).sum(0)


def _attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Causal GQA attention over a whole window, returning the output and the probabilities."""
    n, n_head, d = q.shape
    n_kv = k.shape[1]
    qg = q.reshape(n, n_kv, n_head // n_kv, d).transpose(1, 2, 0, 3)  # (kv, group, n, d)
    s = (qg @ k.transpose(1, 2, 0)[:, None]) * (1.0 / math.sqrt(d))
    p = softmax(np.where(np.triu(np.ones((n, n), bool), 1), -np.inf, s))
    out = p @ v.transpose(1, 0, 2)[:, None]  # (kv, group, n, d)
    return out.transpose(2, 0, 1, 3).reshape(n, n_head * d), p


def _attention_back(q, k, v, p, dout):
    n, n_head, d = q.shape
    n_kv = k.shape[1]
    grp = n_head // n_kv
    c = 1.0 / math.sqrt(d)
    do = dout.reshape(n, n_kv, grp, d).transpose(1, 2, 0, 3)  # (kv, group, n, d)
    qg = q.reshape(n, n_kv, grp, d).transpose(1, 2, 0, 3)
    kt, vt = k.transpose(1, 0, 2)[:, None], v.transpose(1, 0, 2)[:, None]  # (kv, 1, n, d)
    dv = (p.transpose(0, 1, 3, 2) @ do).sum(1)  # (kv, n, d)
    dp = do @ vt.transpose(0, 1, 3, 2)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * c
    dq = (ds @ kt).transpose(2, 0, 1, 3).reshape(n, n_head, d)
    dk = (ds.transpose(0, 1, 3, 2) @ qg).sum(1)
    return dq, dk.transpose(1, 0, 2), dv.transpose(1, 0, 2)


def block_forward(model: Reference, i: int, x: np.ndarray, cos: np.ndarray,
                  sin: np.ndarray) -> tuple[np.ndarray, tuple]:
    """Block `i` on a whole window `x` (n, d) from an empty cache: its output and what the backward
    pass needs."""
    c, w, b = model.config, model.w, model.blocks[i]
    n = len(x)
    r1 = _rms(x, c.rms_eps)
    h = x * r1 * w[b.attn_norm]
    q = apply_rope((h @ w[b.attn_q].T).reshape(n, c.n_head, c.head_dim), cos, sin, c.n_rot)
    k = apply_rope((h @ w[b.attn_k].T).reshape(n, c.n_head_kv, c.head_dim), cos, sin, c.n_rot)
    v = (h @ w[b.attn_v].T).reshape(n, c.n_head_kv, c.head_dim)
    att, probs = _attention(q, k, v)
    xm = x + att @ w[b.attn_output].T
    r2 = _rms(xm, c.rms_eps)
    h2 = xm * r2 * w[b.ffn_norm]
    gate, up = h2 @ w[b.ffn_gate].T, h2 @ w[b.ffn_up].T
    sig = 1.0 / (1.0 + np.exp(-gate))
    act = gate * sig * up
    return xm + act @ w[b.ffn_down].T, (x, r1, h, q, k, v, probs, att, xm, r2, h2, gate, up, sig, act)


def block_backward(model: Reference, i: int, tape: tuple, dx: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                   want: set[str], grads: dict[str, np.ndarray]) -> np.ndarray:
    """From the gradient of block `i`'s output, the gradient of its input; the gradients of its
    weights named in `want` (linear layers, norm gains) go into `grads`."""
    c, w, b = model.config, model.w, model.blocks[i]
    n = len(dx)
    x0, r1, h, q, k, v, probs, att, xm, r2, h2, gate, up, sig, act = tape

    def weight_grad(name: str, dy: np.ndarray, xin: np.ndarray) -> None:
        if name in want:
            grads[name] = dy.T @ xin

    def gain_grad(name: str, dy: np.ndarray, xin: np.ndarray, r: np.ndarray) -> None:
        if name in want:
            grads[name] = _gain_back(xin, r, dy)

    weight_grad(b.ffn_down, dx, act)
    dact = dx @ w[b.ffn_down]
    dup = dact * gate * sig
    dgate = dact * up * sig * (1.0 + gate * (1.0 - sig))
    weight_grad(b.ffn_gate, dgate, h2)
    weight_grad(b.ffn_up, dup, h2)
    dh2 = dgate @ w[b.ffn_gate] + dup @ w[b.ffn_up]
    gain_grad(b.ffn_norm, dh2, xm, r2)
    dx = dx + _rms_back(xm, r2, w[b.ffn_norm], dh2)
    weight_grad(b.attn_output, dx, att)
    dq, dk, dv = _attention_back(q, k, v, probs, dx @ w[b.attn_output])
    dq = apply_rope(dq, cos, -sin, c.n_rot).reshape(n, -1)  # a rotation's transpose turns back
    dk = apply_rope(dk, cos, -sin, c.n_rot).reshape(n, -1)
    dv = dv.reshape(n, -1)
    weight_grad(b.attn_q, dq, h)
    weight_grad(b.attn_k, dk, h)
    weight_grad(b.attn_v, dv, h)
    dh = dq @ w[b.attn_q] + dk @ w[b.attn_k] + dv @ w[b.attn_v]
    gain_grad(b.attn_norm, dh, x0, r1)
    return dx + _rms_back(x0, r1, w[b.attn_norm], dh)


def _kl(logp: np.ndarray, teacher: Teacher) -> tuple[float, np.ndarray]:
    """Mean KL(teacher || model) over tokens, and its gradient with respect to the logits (summed,
    not averaged, over tokens). The teacher's tail beyond its top k is one outcome: the model is
    asked to give the tail the teacher's total mass, spread as it likes."""
    top, t = teacher.ids, teacher.probs
    rows = np.arange(len(top))[:, None]
    grad = np.exp(logp)
    p_top = grad[rows, top]
    grad[rows, top] = 0.0
    tail_t = np.maximum(1.0 - t.sum(-1), 0.0)
    tail_p = np.maximum(grad.sum(-1), 1e-30)  # not 1 - sum(top): that cancels to 0 when the top holds all
    loss = (t * (np.log(np.maximum(t, 1e-30)) - logp[rows, top])).sum()
    loss += (tail_t * (np.log(np.maximum(tail_t, 1e-30)) - np.log(tail_p))).sum()
    grad *= (1.0 - tail_t / tail_p)[:, None]
    grad[rows, top] = p_top - t
    return float(loss / len(top)), grad


def loss_and_grads(model: Reference, ids: np.ndarray, teacher: Teacher,
                   names: list[str]) -> tuple[float, dict[str, np.ndarray]]:
    """KL(teacher || model) per token, averaged over the window, and its gradient with respect to
    every weight in `names` (linear layers, norm gains)."""
    c, w = model.config, model.w
    n = len(ids)
    cos, sin = rope_tables(c, np.arange(n))
    x = model.embed(ids)
    tapes = []
    for i in range(c.n_layer):
        x, tape = block_forward(model, i, x, cos, sin)
        tapes.append(tape)
    norm = model.arch.OUTPUT_NORM
    rf = _rms(x, c.rms_eps)
    hf = x * rf * w[norm]
    head = model.output
    logits = hf @ head.T
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    loss, dlogits = _kl(logp, teacher)

    want, grads = set(names), {}
    dhf = (dlogits / n) @ head
    if norm in want:
        grads[norm] = _gain_back(x, rf, dhf)
    dx = _rms_back(x, rf, w[norm], dhf)
    for i in reversed(range(c.n_layer)):
        dx = block_backward(model, i, tapes[i], dx, cos, sin, want, grads)
    return loss, grads


def teacher_probs(model: Reference, windows: list[list[int]], top_k: int = TuneOptions.top_k,
                  progress: Progress | None = None) -> list[Teacher]:
    """The source model's top-k next-token probabilities at each position of each window."""
    out = []
    for i, ids in enumerate(windows):
        if progress:
            progress(f"the source model's outputs, window {i + 1}/{len(windows)}")
        probs = softmax(model.forward(ids, model.new_cache(len(ids)), all_logits=True))
        k = min(top_k, probs.shape[-1])
        top = np.argpartition(-probs, k - 1, axis=-1)[:, :k].astype(np.int32)
        out.append(Teacher(top, np.take_along_axis(probs, top, -1).astype(np.float32)))
    return out


def tune(model: Reference, quantized: dict[str, QTensor], teacher: list[Teacher], windows: list[list[int]],
         options: TuneOptions = TuneOptions(),
         progress: Progress | None = None) -> tuple[dict[str, QTensor], dict[str, np.ndarray], list[float]]:
    """Train the scales and minimums of the tensors in `quantized` (and with `options.norms` the
    RMSNorm gains) on `windows` against `teacher`, the source model's probabilities on them.
    `model.w` ends holding the tuned weights. Returns the tuned tensors, the tuned gains (none
    without `options.norms`) and the mean KL per epoch."""
    if not windows or len(windows) != len(teacher):
        raise LutlmError("tuning needs calibration windows and the source model's outputs on them")
    groups: dict[str, _Group | _Gain] = {n: _Group(q) for n, q in quantized.items()}
    if options.norms:
        groups |= {n: _Gain(model.w[n]) for n in model.config.norm_names()}
    for n, g in groups.items():
        model.w[n] = g.weight()
    unit = {n: g.unit() for n, g in groups.items()}
    moments = {n: [(np.zeros_like(a), np.zeros_like(a)) for a in g.params()] for n, g in groups.items()}
    b1, b2, step, kl = 0.9, 0.999, 0, []
    total = options.epochs * len(windows)
    rng = np.random.default_rng(0)
    for epoch in range(options.epochs):
        losses = []
        for j in rng.permutation(len(windows)):
            loss, grads = loss_and_grads(model, np.asarray(windows[j]), teacher[j], list(groups))
            losses.append(loss)
            step += 1
            correction = math.sqrt(1 - b2 ** step) / (1 - b1 ** step)
            lr = options.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / total))
            for n, g in groups.items():
                for a, d, (m1, m2) in zip(g.params(), g.grads(grads[n]), moments[n]):
                    m1 *= b1
                    m1 += (1 - b1) * d
                    m2 *= b2
                    m2 += (1 - b2) * d * d
                    a -= lr * unit[n] * correction * m1 / (np.sqrt(m2) + 1e-12)
                model.w[n] = g.weight()
            if progress:
                progress(f"tuning epoch {epoch + 1}/{options.epochs}, "
                         f"window {len(losses)}/{len(windows)}: KL {loss:.4f}")
        kl.append(float(np.mean(losses)))
    tuned = {n: g.qtensor() for n, g in groups.items() if isinstance(g, _Group)}
    return tuned, {n: g.gain for n, g in groups.items() if isinstance(g, _Gain)}, kl

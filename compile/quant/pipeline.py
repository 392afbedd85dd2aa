"""`lutlm quantize`: from a checkpoint and a request to quantised tensors plus honest statistics."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..checkpoint import Checkpoint
from ..errors import LutlmError
from ..perplexity import windows
from ..reference import Reference
from .calibration import gptq_model
from .format import QTensor, QuantSpec, quantize_rtn
from .gptq import GPTQOptions
from .mixed import allocate, check_budget, measure, options_of
from .tune import LR_SCHEDULE, TuneOptions, teacher_probs, tune


@dataclass
class Request:
    bits: str  # "4", "3", "2", "t" or "mixed"
    group: int = 32
    scale_bits: int = 16  # 8: scales and minimums as 8-bit codes times an f16 step per row (mixed: among such formats)
    method: str = "gptq"
    budget: float | None = None
    embed_bits: int = 8
    calib_texts: list[str] = field(default_factory=lambda: ["c4", "code"])
    calib_windows: int = 32
    window: int = 512
    gptq: GPTQOptions = GPTQOptions()
    tune: TuneOptions | None = None  # then scales and minimums are trained end to end afterwards

    def validate(self) -> None:
        if self.method not in ("rtn", "gptq"):
            raise LutlmError(f"method must be rtn or gptq, not {self.method!r}")
        if self.bits == "mixed":
            QuantSpec.parse(2, 32, self.scale_bits)  # a clear error for scale bits other than 16 and 8
            if self.budget is None:
                raise LutlmError("--bits mixed needs --budget BPW (bits per weight, scales included)")
            if not 0 < self.budget < math.inf:  # also NaN
                raise LutlmError(f"--budget must be a positive number of bits per weight, not {self.budget}")
        elif self.budget is not None:
            raise LutlmError("--budget applies to --bits mixed only")
        else:
            QuantSpec.parse(self.bits, self.group, self.scale_bits)
        if self.embed_bits not in (4, 8):
            raise LutlmError(f"--embed-bits must be 4 or 8, not {self.embed_bits}")
        if not 0 <= self.gptq.damp < math.inf:
            raise LutlmError(f"--damp must be a fraction of at least 0, not {self.gptq.damp}")
        if self.calib_windows < 1:
            raise LutlmError("--calib-windows must be at least 1")
        if self.tune is not None:
            if self.tune.epochs < 1 or not 0 < self.tune.lr < math.inf:
                raise LutlmError("--tune needs at least 1 epoch and a positive learning rate")
            if self.tune.top_k < 1:
                raise LutlmError("tuning needs the source model's top k probabilities for some k >= 1")

    @property
    def needs_calibration(self) -> bool:
        return self.method == "gptq" or self.bits == "mixed" or self.tune is not None


def bits_per_weight(specs: dict[str, QuantSpec], ckpt: Checkpoint) -> float:
    shapes = {name: ckpt.tensors[name].shape for name in specs}
    bits = sum(specs[n].bpw_for(shapes[n][1]) * shapes[n][0] * shapes[n][1] for n in specs)
    return bits / sum(rows * cols for rows, cols in shapes.values())


def calibration_windows(texts: dict[str, str], encode: Callable[[str], list[int]], count: int,
                        size: int) -> list[list[int]]:
    """`count` windows of `size` tokens, taken in turn from each calibration text."""
    per_text = []
    for name, text in texts.items():
        tokens = encode(text)
        if len(tokens) < size:
            raise LutlmError(f"calibration text {name!r} has {len(tokens)} tokens; a window needs {size}")
        per_text.append(windows(tokens, size, len(tokens) // size))
    picked = [w for group in zip(*per_text) for w in group][:count]
    if len(picked) < count:
        raise LutlmError(f"the calibration texts give {len(picked)} windows of {size} tokens; {count} requested")
    return picked


def quantize(ckpt: Checkpoint, req: Request, calib: list[list[int]] | None,
             log: Callable[[str], None] = lambda msg: None
             ) -> tuple[dict[str, QTensor], dict[str, np.ndarray], dict[str, Any]]:
    """Quantise `ckpt` as requested; its tensors are left untouched. Returns the quantised tensors,
    the float tensors that changed (the norm gains, when tuning trains them) and statistics."""
    req.validate()
    t0 = time.perf_counter()
    model = Reference(Checkpoint(ckpt.config, dict(ckpt.tensors), ckpt.tokenizer))
    names, embeddings = model.arch.linear_names(ckpt.config), model.arch.embeddings(ckpt.config)
    out: dict[str, QTensor] = {}
    gains: dict[str, np.ndarray] = {}
    for name in embeddings:
        spec = QuantSpec(8, 32, symmetric=True) if req.embed_bits == 8 else QuantSpec(4, 32)
        out[name] = quantize_rtn(model.w[name], spec, name)
        model.w[name] = out[name].dequantize()

    if req.bits == "mixed":
        if not calib:
            raise LutlmError("mixed precision needs calibration text to measure sensitivity")
        options = options_of(req.scale_bits)
        check_budget(req.budget, {name: model.w[name].shape for name in names}, options)  # before minutes of measuring
        log("measuring the sensitivity of each tensor")
        sens = measure(model, names, calib[0][: min(256, len(calib[0]))], req.budget, options, progress=log)
        plan = allocate(sens, req.budget)
    else:
        spec = QuantSpec.parse(req.bits, req.group, req.scale_bits)
        for name in names:
            spec.check_shape(model.w[name].shape, name)
        plan = {name: spec for name in names}

    if req.method == "gptq":
        if not calib:
            raise LutlmError("GPTQ needs calibration text")
        out.update(gptq_model(model, plan, calib, req.gptq, progress=log))
    else:
        for name in names:
            out[name] = quantize_rtn(model.w[name], plan[name], name)
    if req.tune is not None:
        if not calib:
            raise LutlmError("tuning needs calibration text")
        teacher = teacher_probs(Reference(ckpt), calib, req.tune.top_k, progress=log)
        tuned, gains, kl = tune(model, {n: out[n] for n in names}, teacher, calib, req.tune, progress=log)
        out.update(tuned)
    seconds = time.perf_counter() - t0
    emb = {n: out[n].spec for n in embeddings}
    info = {
        "method": req.method, "bits": req.bits, "group": req.group if req.bits != "mixed" else None,
        "scale_bits": req.scale_bits,
        "budget": req.budget, "embed_bits": req.embed_bits,
        "calibration": None if not req.needs_calibration else
        {"texts": [Path(t).name for t in req.calib_texts], "windows": len(calib or []), "window": req.window,
         "damp": req.gptq.damp, "act_order": req.gptq.act_order},
        "tune": None if req.tune is None else {**asdict(req.tune), "lr_schedule": LR_SCHEDULE,
                                               "kl_per_epoch": [round(k, 4) for k in kl]},
        "bpw_linear": round(bits_per_weight(plan, ckpt), 4),
        "bpw_embedding": round(bits_per_weight(emb, ckpt), 4),
        "mix": {spec.name: sum(1 for s in plan.values() if s == spec) for spec in sorted(set(plan.values()), key=lambda s: s.bpw)},
        "seconds": round(seconds, 1),
    }
    return out, gains, info


def summary(info: dict[str, Any]) -> str:
    mix = ", ".join(f"{k}: {v}" for k, v in info["mix"].items())
    tuned = f" + {info['tune']['epochs']} epochs of tuning" if info.get("tune") else ""
    return (f"{info['method']}{tuned} {info['bits']}: {info['bpw_linear']:.3f} bits per weight in linear layers "
            f"({mix}), embedding {info['bpw_embedding']:.2f}; {info['seconds']:.0f} s")


"""Run a model package's plans on a GPU backend: prefill, decode, sampling, perplexity scoring.

Everything is created once at load: one buffer per weight tensor and per activation buffer, the
KV cache for the chosen context, one pipeline per kernel and one bound call (with its own small
uniform buffer) per plan step. A decode step then rewrites only the uniforms that changed (the
position), submits the decode, head and sampling plans as one command buffer, and reads back the
4-byte id the sampler left in ids[0], which is also the next step's input: nothing else crosses.
So the next step is queued before that id arrives, and the GPU runs it meanwhile.

The cache holds `history`: the tokens whose keys and values it has. A new prompt that starts
with part of the history (the earlier turns of a chat) only prefills what is new.
"""

from __future__ import annotations

import math
import struct
from array import array
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Sequence

from .expr import value
from .gpu import Backend, Call, usable
from .package import Manifest, PackageError, Reader, buffer_sizes, load_tensors, read_text


class GenerationError(ValueError):
    """A request the engine cannot serve as asked (bad parameter, prompt over the context)."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int = 0
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages every id already in prompt or output

    def validate(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 100):
            raise GenerationError(f"temperature must be in [0, 100], not {self.temperature!r}")
        if not (isinstance(self.top_k, int) and not isinstance(self.top_k, bool) and 0 <= self.top_k < 1 << 31):
            raise GenerationError(f"top_k must be an integer in [0, 2^31), not {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise GenerationError(f"top_p must be in (0, 1], not {self.top_p!r}")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 1 << 32):
            raise GenerationError(f"seed must be an integer in [0, 2^32), not {self.seed!r}")
        if not (isinstance(self.repetition_penalty, (int, float)) and 0 < self.repetition_penalty <= 10):
            raise GenerationError(f"repetition_penalty must be in (0, 10], not {self.repetition_penalty!r}")


DEFAULT_CTX = 2048


def default_ctx(manifest: Manifest) -> int:
    """The context a session gets unless it asks for one: the model's, at most DEFAULT_CTX tokens
    (the KV cache and the score buffer grow with it)."""
    return min(manifest["max_ctx"], DEFAULT_CTX)


class Engine:
    def __init__(self, manifest: Manifest, tensors: dict[str, Any], wgsl: dict[str, str], backend: Backend,
                 ctx: int | None = None) -> None:
        self.manifest, self.backend = manifest, backend
        cfg = manifest.config
        self.ctx = int(ctx or default_ctx(manifest))
        if not 1 <= self.ctx <= manifest["max_ctx"]:
            raise GenerationError(f"context {self.ctx} outside 1..{manifest['max_ctx']} for this model")
        self.chunk, self.vocab = manifest["chunk"], cfg["n_vocab"]
        limit = backend.limits["max-storage-buffer-binding-size"]
        self.buffers: dict[str, Any] = {}
        for name, data in tensors.items():
            if len(data) > limit:
                raise PackageError(f"tensor {name} has {len(data)} bytes; the adapter binds at most {limit}")
            self.buffers[name] = backend.create_buffer(len(data), bytes(data))
        for name, size in buffer_sizes(manifest, self.ctx, limit).items():
            self.buffers[name] = backend.create_buffer(size)
        self._fill_rope(manifest["rope"]["theta"], manifest["rope"]["pairs"], cfg["n_rot"])
        kernels = {kid: {**manifest["kernels"][kid], "name": kid, "wgsl": text} for kid, text in wgsl.items()}
        # per step: its call, its constant uniforms, those that are expressions (of pos, m, ...)
        # and the values last written; a decode step rewrites only the ~90 calls that have any
        self.plans: dict[str, list[tuple[Call, dict[str, Any], dict[str, str], list]]] = {
            name: [(backend.bind(kernels[usable(manifest["kernels"], st["kernel"], backend.features)],
                                 [self.buffers[b] for b in st["bind"]]),
                    {k: v for k, v in st["sizes"].items() if isinstance(v, (int, float))},
                    {k: v for k, v in st["sizes"].items() if not isinstance(v, (int, float))}, [None])
                   for st in steps]
            for name, steps in manifest["plans"].items()}
        self.history: list[int] = []
        self._pending: list[Any] = []  # queued readbacks of decode steps, oldest first
        self.eos = set(manifest["eos_ids"])

    @classmethod
    def load(cls, manifest: Manifest, read: Reader, backend: Backend, ctx: int | None = None) -> "Engine":
        """The engine of a parsed manifest; `read(path, size)` gives a file of the package (a folder
        natively, fetched files in a browser). Every file is read and verified against the manifest
        before the backend is asked to hold anything; first it says whether it runs the plans' kernels
        at all (the CPU backend refuses a package without CPU ops before reading a shard)."""
        steps = {st["kernel"] for plan in manifest["plans"].values() for st in plan}
        backend.check({kid: {**manifest["kernels"][kid], "name": kid} for kid in sorted(steps)})
        wgsl = {kid: read_text(manifest, read, k["file"]) for kid, k in manifest["kernels"].items()}
        tensors = load_tensors(manifest, read)
        bound = {usable(manifest["kernels"], kid, backend.features) for kid in steps}
        return cls(manifest, tensors, {kid: wgsl[kid] for kid in sorted(bound)}, backend, ctx)

    def _fill_rope(self, theta: float, pairs: int, n_rot: int) -> None:
        inv = [theta ** (-2 * i / n_rot) for i in range(pairs)]
        table = array("f")
        for pos in range(self.ctx):
            for f in inv:
                table.append(math.cos(pos * f))
                table.append(math.sin(pos * f))
        self.backend.write_buffer(self.buffers["rope"], table.tobytes())

    def _calls(self, plans: Sequence[str], variables: dict[str, Any]) -> list[Call]:
        calls = []
        for plan in plans:
            for call, fixed, exprs, last in self.plans[plan]:
                if exprs or last[0] is None:
                    values = {**fixed, **{k: value(v, variables) for k, v in exprs.items()}}
                    if values != last[0]:  # only uniforms that changed are rewritten
                        call.set(values)
                        last[0] = values
                calls.append(call)
        return calls

    def _submit(self, plans: Sequence[str], variables: dict[str, Any]) -> Any:
        """Queue the plans and the readback of the id they leave in ids[0]; `_id` awaits it."""
        self.backend.submit(self._calls(plans, variables))
        return self.backend.read_later(self.buffers["ids"], 4)

    async def _id(self, pending: Any) -> int:
        return struct.unpack("<i", await self.backend.wait(pending))[0]

    async def _settle(self) -> None:
        """Collect the readbacks a stopped generation left queued (their steps' ids are unused)."""
        while self._pending:
            await self.backend.wait(self._pending.pop(0))

    def _variables(self, m: int, pos: int, sampling: Sampling, step: int) -> dict[str, Any]:
        return {"m": m, "pos": pos, "ctx": self.ctx, "temperature": float(sampling.temperature or 1.0),
                "top_k": sampling.top_k, "top_p": float(sampling.top_p), "seed": sampling.seed, "step": step,
                "penalty": float(sampling.repetition_penalty), "seen_count": 0}

    def reset(self) -> None:
        self.history = []

    def _reuse(self, prompt: list[int]) -> int:
        """Length of the cached prefix to keep: shared with the prompt, leaving >= 1 token to run."""
        keep = 0
        for a, b in zip(self.history, prompt[:-1]):
            if a != b:
                break
            keep += 1
        return keep

    async def _prefill(self, tokens: list[int], pos: int, last: list[str], variables: dict[str, Any]) -> int:
        nxt = -1
        for start in range(0, len(tokens), self.chunk):
            part = tokens[start:start + self.chunk]
            self.backend.write_buffer(self.buffers["ids"], array("i", part).tobytes())
            variables.update(m=len(part), pos=pos + start)
            final = start + self.chunk >= len(tokens)
            nxt = await self._id(self._submit(["prefill"] + (last if final else []), variables))
        return nxt

    async def generate(self, prompt: list[int], max_tokens: int, sampling: Sampling = Sampling(),
                       cancelled: Callable[[], bool] = lambda: False) -> AsyncIterator[int]:
        """Yield generated ids until EOS (not yielded), `max_tokens`, the context end or cancellation."""
        sampling.validate()
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise GenerationError(f"max_tokens must be a positive integer, not {max_tokens!r}")
        if not prompt:
            raise GenerationError("the prompt is empty")
        if any(not isinstance(t, int) or not 0 <= t < self.vocab for t in prompt):
            raise GenerationError(f"prompt token ids must be integers in [0, {self.vocab})")
        if len(prompt) >= self.ctx:
            raise GenerationError(f"the prompt has {len(prompt)} tokens; the context holds {self.ctx} "
                                  f"(at least one more is needed to answer)")
        await self._settle()
        keep = self._reuse(prompt)
        self.history = prompt[:keep]
        pick = ["head", "greedy" if sampling.temperature == 0 else "sample"]
        variables = self._variables(1, keep, sampling, 0)
        seen: dict[int, None] = {}
        if sampling.repetition_penalty != 1:
            if "penalty" not in self.plans:
                raise GenerationError("this package has no repetition-penalty plan")
            pick.insert(1, "penalty")
            seen = dict.fromkeys(prompt)
            self.backend.write_buffer(self.buffers["seen"], array("i", list(seen)).tobytes())
            variables["seen_count"] = len(seen)
        token = await self._prefill(prompt[keep:], keep, pick, variables)
        self.history = list(prompt)
        # The step that runs a token is queued before the token is read back (the sampler leaves
        # it in ids[0], the next step's input), so the GPU never waits for the host: while the
        # host reads and hands out one token, the step after it runs. A step queued after the
        # last token is wasted (its position in the cache lies past the history); the penalty
        # kernel covers the token a step runs, which `seen` may not hold yet.
        inflight = self._pending  # what a stopped generation leaves here, the next one settles
        if len(self.history) < self.ctx and max_tokens > 1:
            inflight.append(self._step(pick, variables, len(self.history), 1))
        for step in range(max_tokens):
            if token in self.eos:
                return
            yield token
            if not inflight or cancelled():
                return
            if sampling.repetition_penalty != 1 and token not in seen:
                self.backend.write_buffer(self.buffers["seen"], array("i", [token]).tobytes(), 4 * len(seen))
                seen[token] = None
                variables["seen_count"] = len(seen)
            if step + 2 < max_tokens and len(self.history) + 1 < self.ctx:
                inflight.append(self._step(pick, variables, len(self.history) + 1, step + 2))
            nxt = await self._id(inflight.pop(0))
            self.history.append(token)
            token = nxt

    def _step(self, pick: list[str], variables: dict[str, Any], pos: int, step: int) -> Any:
        """Queue the decode step at `pos` (the sampler's `step`-th draw) on whatever ids[0] holds."""
        variables.update(m=1, pos=pos, step=step)
        return self._submit(["decode"] + pick, variables)

    async def score(self, tokens: list[int]) -> list[float]:
        """Negative log-likelihood of tokens[1:] given what precedes each, from an empty cache."""
        if not 2 <= len(tokens) <= self.ctx:
            raise GenerationError(f"scoring needs 2..{self.ctx} tokens, got {len(tokens)}")
        if "score" not in self.plans:
            raise GenerationError("this package has no score plan (perplexity); compile it again with this lutlm")
        await self._settle()
        self.history = []
        nll: list[float] = []
        variables = self._variables(1, 0, Sampling(), 0)
        for start in range(0, len(tokens), self.chunk):
            part = tokens[start:start + self.chunk]
            targets = tokens[start + 1:start + 1 + len(part)]
            self.backend.write_buffer(self.buffers["ids"], array("i", part).tobytes())
            self.backend.write_buffer(self.buffers["targets"], array("i", targets + [0] * (len(part) - len(targets))).tobytes())
            variables.update(m=len(part), pos=start)
            self.backend.submit(self._calls(["prefill", "score"], variables))
            values = array("f", await self.backend.wait(self.backend.read_later(self.buffers["nll"], 4 * len(part))))
            nll.extend(values[:len(targets)])
        return nll

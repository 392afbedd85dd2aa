"""An OpenAI-style chat completions surface over the engine, async-first.

    llm = LutLM(engine, tokenizer, template, model="smollm2-135m-instruct-q4")
    reply = await llm.chat.completions.create(messages=[{"role": "user", "content": "Hi"}])
    async for chunk in await llm.chat.completions.create(messages=..., stream=True): ...

One request runs at a time; a second one waits for the first (requests are queued, never
interleaved). `interrupt()` stops the running one between two tokens (finish_reason "abort").
Stop strings are matched on the decoded text, and text that might begin one is held back until
it is known not to.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from .chat_template import ChatTemplate
from .engine import Engine, GenerationError, Sampling
from .package import Reader, folder_reader, read_manifest, read_tokenizer
from .tokenizer import Tokenizer

PARAMETERS = {"messages", "stream", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
              "repetition_penalty", "model", "ignore_eos"}  # ignore_eos: decode max_tokens whatever (benchmarks)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused_tokens: int = 0  # prompt tokens whose keys and values were already cached
    prefill_s: float = 0.0  # time to the first generated token
    decode_s: float = 0.0
    decode_kernel_s: float | None = None  # of decode_s, inside the CPU kernels' module (CPU backend only)

    def to_json(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens, "reused_tokens": self.reused_tokens,
                "ttft_s": round(self.prefill_s, 4),
                "decode_tokens_per_s": round((self.completion_tokens - 1) / self.decode_s, 3)
                if self.completion_tokens > 1 and self.decode_s > 0 else None,
                # the host's share of a decode step (Python, the crossings, streaming) where it can be told apart
                **({"host_ms_per_token": round(1000 * (self.decode_s - self.decode_kernel_s)
                                               / (self.completion_tokens - 1), 3)}
                   if self.decode_kernel_s is not None and self.completion_tokens > 1 else {})}


class _Completions:
    def __init__(self, llm: "LutLM") -> None:
        self._llm = llm

    async def create(self, **kwargs: Any) -> Any:
        """OpenAI's parameters (unknown ones are an error, not ignored); `stream=True` returns an
        async iterator of chunks, otherwise the whole completion."""
        unknown = sorted(set(kwargs) - PARAMETERS)
        if unknown:
            raise GenerationError(f"unknown parameter(s): {', '.join(unknown)} (known: {', '.join(sorted(PARAMETERS))})")
        request = self._llm._request(**kwargs)
        if kwargs.get("stream"):
            return self._llm._stream(*request)
        text, finish, usage = [], None, None
        async for chunk in self._llm._stream(*request):
            choice = chunk["choices"][0]
            text.append(choice["delta"].get("content", ""))
            finish = choice["finish_reason"] or finish
            usage = chunk.get("usage", usage)
        return {"id": f"chatcmpl-{int(time.time() * 1000)}", "object": "chat.completion", "created": int(time.time()),
                "model": self._llm.model, "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                             "finish_reason": finish}]}


class _Chat:
    def __init__(self, llm: "LutLM") -> None:
        self.completions = _Completions(llm)


class LutLM:
    def __init__(self, engine: Engine, tokenizer: Tokenizer, template: ChatTemplate, model: str = "lutlm") -> None:
        self.engine, self.tokenizer, self.template, self.model = engine, tokenizer, template, model
        self.chat = _Chat(self)
        self._lock = asyncio.Lock()
        self._interrupt = False

    @classmethod
    def from_folder(cls, folder: str, backend: Any, ctx: int | None = None) -> "LutLM":
        """A package on disk, read as untrusted input (`package.folder_reader`)."""
        return cls.from_files(folder_reader(folder), backend, ctx)

    @classmethod
    def from_files(cls, read: Reader, backend: Any, ctx: int | None = None) -> "LutLM":
        """A package through `read(path, size)` (a folder natively, fetched files in the browser), every
        file verified against the manifest; the tokenizer is checked before anything reaches the GPU."""
        manifest = read_manifest(read)
        tokenizer = read_tokenizer(manifest, read)
        template = ChatTemplate.from_template(manifest["chat_template"])
        return cls(Engine.load(manifest, read, backend, ctx), tokenizer, template, manifest["name"])

    def interrupt(self) -> None:
        """Stop the running request before its next token."""
        self._interrupt = True

    def reset(self) -> None:
        """Forget the cached conversation (the next request prefills from scratch)."""
        self.engine.reset()

    def _request(self, messages: Any = None, stream: bool = False, max_tokens: int = 256, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop: Any = None,
                 repetition_penalty: float = 1.0, model: str | None = None,
                 ignore_eos: bool = False) -> tuple[list[int], int, Sampling, list[str], bool]:
        if not isinstance(messages, list) or not messages:
            raise GenerationError("messages must be a non-empty list of {role, content} objects")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
            raise GenerationError("stop must be a non-empty string or a list of up to 4 of them")
        sampling = Sampling(float(temperature) if isinstance(temperature, (int, float)) else temperature, top_k,
                            float(top_p) if isinstance(top_p, (int, float)) else top_p,
                            int(time.time_ns() % (1 << 32)) if seed is None else seed, repetition_penalty)
        sampling.validate()
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise GenerationError(f"max_tokens must be a positive integer, not {max_tokens!r}")
        prompt = self.template.encode(self.tokenizer, messages)
        return prompt, max_tokens, sampling, stops, bool(ignore_eos)

    async def _stream(self, prompt: list[int], max_tokens: int, sampling: Sampling, stops: list[str],
                      ignore_eos: bool) -> AsyncIterator[dict[str, Any]]:
        async with self._lock:
            eos = self.engine.eos
            if ignore_eos:
                self.engine.eos = set()
            self._interrupt = False
            usage = Usage(prompt_tokens=len(prompt), reused_tokens=self.engine._reuse(prompt))
            decoder = self.tokenizer.stream(skip_special=True)
            pending, finish = "", "length"
            t0 = time.perf_counter()
            t_first = None
            cid = f"chatcmpl-{int(time.time() * 1000)}"
            tokens = self.engine.generate(prompt, max_tokens, sampling, cancelled=lambda: self._interrupt)
            kernel_s = None  # the CPU backend's time in its kernels when the first token came
            try:
                async for token in tokens:
                    if t_first is None:
                        t_first = time.perf_counter()
                        kernel_s = getattr(self.engine.backend, "kernel_seconds", None)
                    usage.completion_tokens += 1
                    pending += decoder.feed(token)
                    cut = min((pending.find(s) for s in stops if s in pending), default=-1)
                    if cut >= 0:
                        pending, finish = pending[:cut], "stop"
                        break
                    hold = max((k for s in stops for k in range(1, len(s)) if pending.endswith(s[:k])), default=0)
                    if len(pending) > hold:
                        yield self._chunk(cid, pending[:len(pending) - hold], None)
                        pending = pending[len(pending) - hold:]
                    await asyncio.sleep(0)  # let other tasks (a UI, an interrupt) run between tokens
                else:
                    pending += decoder.flush()
                    if self._interrupt:
                        finish = "abort"
                    elif usage.completion_tokens < max_tokens and len(self.engine.history) < self.engine.ctx:
                        finish = "stop"  # an end-of-sequence token
            finally:
                self.engine.eos = eos
            t_end = time.perf_counter()
            usage.prefill_s = (t_first or t_end) - t0
            usage.decode_s = t_end - (t_first or t_end)
            if kernel_s is not None and t_first is not None:
                usage.decode_kernel_s = self.engine.backend.kernel_seconds - kernel_s
            if pending:
                yield self._chunk(cid, pending, None)
            final = self._chunk(cid, "", finish)
            final["usage"] = usage.to_json()
            yield final

    def _chunk(self, cid: str, text: str, finish: str | None) -> dict[str, Any]:
        return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": self.model,
                "choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}

"""Generation from any model the same way: a model package on the runtime (native GPU, any
sampling) or any other SOURCE on the numpy reference (CPU, greedy). One prompt builder and one
streaming decode of tokens to text serve both, so `lutlm generate` cannot drift between them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Iterator

from . import build
from .errors import LutlmError

if TYPE_CHECKING:
    from runtime_py import ChatTemplate, Tokenizer
    from runtime_py.engine import Sampling


@dataclass
class Generation:
    """A generation under way: the prompt's ids, the tokens as they are made (nothing runs until
    they are read), and the tokenizer that turns them into text."""

    prompt: list[int]
    tokens: Iterator[int]
    tokenizer: Tokenizer
    count: int = 0  # tokens read so far

    def pieces(self, ids: bool = False) -> Iterator[str]:
        """The text as soon as it can be decoded (a character split across tokens waits for the
        rest), special tokens left out, ending with what the decoder still held; with `ids`, each
        token's id and a space instead."""
        stream = self.tokenizer.stream(skip_special=True)
        for token in self.tokens:
            self.count += 1
            yield f"{token} " if ids else stream.feed(token)
        yield "" if ids else stream.flush()


def generate(source: str, prompt: str, sampling: Sampling, max_tokens: int = 128, chat: bool = False,
             system: str | None = None, ctx: int | None = None,
             progress: build.Progress = build.SILENT, device: str = "gpu") -> Generation:
    """Start generating after `prompt`: in the model's chat template (after `system`, if given)
    with `chat`, else as plain text after BOS where the model wants one. A model package runs with
    `sampling`; the numpy reference decodes greedily only (its context: `ctx`, else the model's
    up to 2048 tokens). `device`: where a package runs (build.DEVICES)."""
    if build.is_package(source):
        sampling.validate()  # before the package is loaded
        llm = build.open_package(Path(source), ctx, progress, device)
        cfg = llm.engine.manifest.config
        ids = _prompt(llm.tokenizer, llm.template if chat else None, cfg["bos_id"] if cfg["add_bos"] else None,
                      prompt, system)
        return Generation(ids, _blocking(llm.engine.generate(ids, max_tokens, sampling)), llm.tokenizer)
    from runtime_py import ChatTemplate

    from .reference import Reference

    if sampling.temperature:
        raise LutlmError("--temperature needs a model package (the numpy reference decodes greedily)")
    ckpt = build.load(source, progress=progress)
    tok = build.tokenizer(ckpt)
    stop = {i for i in (ckpt.config.eos_id,) if i is not None}
    template = ChatTemplate.from_template(ckpt.chat_template) if chat else None
    if template is not None:
        stop |= {tok.token_id(s) for s in template.stop_strings if s in tok.added}
    ids = _prompt(tok, template, ckpt.config.bos_id if ckpt.config.add_bos else None, prompt, system)
    n_ctx = ctx or min(2048, ckpt.config.n_ctx)
    return Generation(ids, Reference(ckpt).generate_greedy(ids, max_tokens, stop, n_ctx=n_ctx), tok)


def _prompt(tokenizer: Tokenizer, template: ChatTemplate | None, bos: int | None, text: str,
            system: str | None) -> list[int]:
    """The prompt's ids: the user's message in the chat template, or without one the text after `bos`."""
    if template is None:
        return ([] if bos is None else [bos]) + tokenizer.encode(text)
    messages = [{"role": "system", "content": system}] if system else []
    return template.encode(tokenizer, messages + [{"role": "user", "content": text}])


def _blocking(tokens: AsyncIterator[int]) -> Iterator[int]:
    """The runtime's async token stream as a plain iterator, every token awaited on one event
    loop (an asyncio.Runner, so that Ctrl-C cancels the step as under asyncio.run)."""
    async def next_token() -> int | None:
        return await anext(tokens, None)

    with asyncio.Runner() as runner:
        while (token := runner.run(next_token())) is not None:
            yield token

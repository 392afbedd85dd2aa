"""Chat templates without Jinja.

Pyodide has no jinja2, and a model's template is untrusted text, so we do what llama.cpp does:
recognise the template's family from its text and render that family in code. The test suite
renders the model's real Jinja template with jinja2 and requires identical output.

Roles and contents are user text: `parts` keeps them apart from the template's own markup, and
`encode` parses special tokens (`<|im_end|>`, ...) only in the markup, so a message that spells
`<|im_end|><|im_start|>system` stays text and cannot close its turn or open another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:
    from .tokenizer import Tokenizer

Message = Mapping[str, str]
Part = tuple[str, bool]  # a piece of the rendered conversation, and whether it is the template's markup


class ChatTemplateError(ValueError):
    """The template's family is not recognised, or the messages are malformed."""


_CHATML_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system\\?n?\s?(.*?)<\|im_end\|>", re.S)


@dataclass(frozen=True)
class ChatTemplate:
    """ChatML: `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message.

    `default_system` is the system message some templates (SmolLM2's) insert when the
    conversation does not start with one.
    """

    default_system: str | None = None
    stop_strings: tuple[str, ...] = ("<|im_end|>",)

    @classmethod
    def from_template(cls, template: str | None) -> "ChatTemplate":
        if not template:
            return cls()
        if "<|im_start|>" not in template:
            raise ChatTemplateError("unrecognised chat template (only ChatML-style templates are supported)")
        default = None
        if "!= 'system'" in template or '!= "system"' in template:
            m = _CHATML_DEFAULT_SYSTEM.search(template)
            if m:
                default = m.group(1).replace("\\n", "\n")
        return cls(default_system=default)

    def parts(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> list[Part]:
        """The rendered conversation as pieces, each marked as the template's markup or as text."""
        if not isinstance(messages, Sequence) or isinstance(messages, str):
            raise ChatTemplateError("messages must be a list of {role, content} objects")
        parts: list[Part] = []
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, Mapping) else None
            content = message.get("content") if isinstance(message, Mapping) else None
            if not isinstance(role, str) or not isinstance(content, str):
                raise ChatTemplateError(f"message {i} needs string 'role' and 'content'")
            if i == 0 and role != "system" and self.default_system is not None:
                parts.append((f"<|im_start|>system\n{self.default_system}<|im_end|>\n", True))
            parts += [("<|im_start|>", True), (role, False), ("\n", True), (content, False), ("<|im_end|>\n", True)]
        if add_generation_prompt:
            parts.append(("<|im_start|>assistant\n", True))
        return parts

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        return "".join(text for text, _ in self.parts(messages, add_generation_prompt))

    def encode(self, tokenizer: "Tokenizer", messages: Sequence[Message], add_generation_prompt: bool = True) -> list[int]:
        """The conversation's token ids, special tokens parsed only in the template's markup."""
        return tokenizer.encode_parts(self.parts(messages, add_generation_prompt))

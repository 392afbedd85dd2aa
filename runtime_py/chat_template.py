"""Chat templates without Jinja.

Pyodide has no jinja2, and a model's template is untrusted text, so we do what llama.cpp does:
recognise the template's family from its text and render that family in code. The test suite
renders the model's real Jinja template with jinja2 and requires identical output.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

Message = Mapping[str, str]


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

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        parts: list[str] = []
        for i, message in enumerate(messages):
            role, content = message.get("role"), message.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                raise ChatTemplateError(f"message {i} needs string 'role' and 'content'")
            if i == 0 and role != "system" and self.default_system is not None:
                parts.append(f"<|im_start|>system\n{self.default_system}<|im_end|>\n")
            parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

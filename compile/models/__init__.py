"""The architectures lutlm compiles, one module each, looked up by ModelConfig.architecture.

A module names its tensors (the globals, `block(i)`), shapes them from a config
(`tensor_shapes`), lists what is quantised (`embeddings`, `linear_names`) and kept as f32
(`norm_names`), and maps Hugging Face names onto them (`from_hf`, `hf_rotate_half`).
"""

from __future__ import annotations

from types import ModuleType

from ..errors import LutlmError
from ..validate import show
from . import llama

ARCHITECTURES: dict[str, ModuleType] = {llama.ARCHITECTURE: llama}


def architecture(name: str, where: str = "model config") -> ModuleType:
    """The module that defines the architecture `name` (ModelConfig.architecture); `where` names
    the config in the error."""
    module = ARCHITECTURES.get(name)
    if module is None:
        raise LutlmError(f"{where}: unsupported architecture {show(name)} (supported: {', '.join(ARCHITECTURES)})")
    return module

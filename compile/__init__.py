"""lutlm's native compile side: model intake, numpy reference, quantisation, kernels, packaging, CLI."""

from .errors import LutlmError

__all__ = ["LutlmError"]

"""lutlm's runtime: pure Python (standard library only) so the same code runs natively and in Pyodide.

It must never import numpy or anything from `lutlm` (the native compile side); the model package
is the only thing the two share.
"""

from .chat_template import ChatTemplate, ChatTemplateError
from .tokenizer import StreamDecoder, Tokenizer, TokenizerError

__all__ = ["ChatTemplate", "ChatTemplateError", "StreamDecoder", "Tokenizer", "TokenizerError"]

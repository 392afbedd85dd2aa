"""A tiny integer-arithmetic evaluator for the dispatch-grid expressions of a model package.

The package is untrusted input, so its expressions are parsed here, never handed to `eval`:
integers, names bound by the caller, + - * // %, unary minus, parentheses, min(a, b), max(a, b).
Division and modulo floor like Python's (TIR's floordiv/floormod); division by zero is an error.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_]\w*)|(//|[-+*%(),]))")
MAX_LENGTH = 1000


class ExprError(ValueError):
    """An expression that does not parse or cannot be evaluated with the given names."""


def evaluate(text: str, names: dict[str, int]) -> int:
    if not isinstance(text, str) or len(text) > MAX_LENGTH:
        raise ExprError(f"expression must be a string of at most {MAX_LENGTH} characters")
    tokens: list[str] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ExprError(f"unexpected character in expression {text!r} at {pos}")
        tokens.append(m.group(m.lastindex))
        pos = m.end()
    parser = _Parser(tokens, names, text)
    value = parser.sum()
    if parser.i != len(tokens):
        raise ExprError(f"unexpected {tokens[parser.i]!r} in expression {text!r}")
    return value


class _Parser:
    def __init__(self, tokens: list[str], names: dict[str, int], text: str) -> None:
        self.tokens, self.names, self.text, self.i = tokens, names, text, 0

    def _peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _take(self, want: str | None = None) -> str:
        tok = self._peek()
        if tok is None or (want is not None and tok != want):
            raise ExprError(f"expected {want or 'a value'} in expression {self.text!r}")
        self.i += 1
        return tok

    def sum(self) -> int:
        value = self.product()
        while self._peek() in ("+", "-"):
            op = self._take()
            rhs = self.product()
            value = value + rhs if op == "+" else value - rhs
        return value

    def product(self) -> int:
        value = self.unary()
        while self._peek() in ("*", "//", "%"):
            op = self._take()
            rhs = self.unary()
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise ExprError(f"division by zero in expression {self.text!r}")
            else:
                value = value // rhs if op == "//" else value % rhs
        return value

    def unary(self) -> int:
        if self._peek() == "-":
            self._take()
            return -self.unary()
        return self.atom()

    def atom(self) -> int:
        tok = self._take()
        if tok == "(":
            value = self.sum()
            self._take(")")
            return value
        if tok.isdigit():
            return int(tok)
        if tok in ("min", "max"):
            self._take("(")
            a = self.sum()
            self._take(",")
            b = self.sum()
            self._take(")")
            return min(a, b) if tok == "min" else max(a, b)
        if tok[0].isalpha() or tok[0] == "_":
            if tok not in self.names:
                raise ExprError(f"unknown name {tok!r} in expression {self.text!r}")
            return int(self.names[tok])
        raise ExprError(f"unexpected {tok!r} in expression {self.text!r}")

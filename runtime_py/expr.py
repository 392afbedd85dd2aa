"""A tiny integer-arithmetic evaluator for the dispatch-grid expressions of a model package.

The package is untrusted input, so its expressions are parsed here, never handed to `eval`:
integers, names bound by the caller, + - * // %, unary minus, parentheses, min(a, b), max(a, b).
Division and modulo floor like Python's (TIR's floordiv/floormod); division by zero is an error.
"""

from __future__ import annotations

import functools
import re
from typing import Callable

_TOKEN = re.compile(r"\s*(?:(\d+)|([A-Za-z_]\w*)|(//|[-+*%(),]))")
MAX_LENGTH = 1000
MAX_DEPTH = 50  # parentheses, min/max and unary minus inside each other (the parser recurses)


class ExprError(ValueError):
    """An expression that does not parse or cannot be evaluated with the given names."""


def evaluate(text: str, names: dict[str, int]) -> int:
    if not isinstance(text, str):
        raise ExprError(f"expression must be a string, not {type(text).__name__}")
    return compile_expr(text)(names)


def value(text: str, names: dict[str, int | float]) -> int | float:
    """A plan step's size: a name the caller binds is its value as it is (a float stays a float),
    anything else an integer expression of the names."""
    return names[text] if text in names else evaluate(text, names)


Fn = Callable[[dict[str, int]], int]


@functools.lru_cache(maxsize=4096)
def compile_expr(text: str) -> Fn:
    """The expression parsed once into a function of the names (a decode step evaluates the same
    few dozen expressions for hundreds of dispatches, in Pyodide's slower interpreter)."""
    if len(text) > MAX_LENGTH:
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
    parser = _Parser(tokens, text)
    fn = parser.sum()
    if parser.i != len(tokens):
        raise ExprError(f"unexpected {tokens[parser.i]!r} in expression {text!r}")
    return fn


class _Parser:
    def __init__(self, tokens: list[str], text: str) -> None:
        self.tokens, self.text, self.i, self.depth = tokens, text, 0, 0

    def _nest(self, step: int) -> None:
        self.depth += step
        if self.depth > MAX_DEPTH:
            raise ExprError(f"expression nested more than {MAX_DEPTH} deep: {self.text[:60]!r}...")

    def _peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _take(self, want: str | None = None) -> str:
        tok = self._peek()
        if tok is None or (want is not None and tok != want):
            raise ExprError(f"expected {want or 'a value'} in expression {self.text!r}")
        self.i += 1
        return tok

    def sum(self) -> Fn:
        fn = self.product()
        while self._peek() in ("+", "-"):
            op = self._take()
            fn = _binary(op, fn, self.product(), self.text)
        return fn

    def product(self) -> Fn:
        fn = self.unary()
        while self._peek() in ("*", "//", "%"):
            op = self._take()
            fn = _binary(op, fn, self.unary(), self.text)
        return fn

    def unary(self) -> Fn:
        if self._peek() == "-":
            self._take()
            self._nest(1)
            inner = self.unary()
            self._nest(-1)
            return lambda names: -inner(names)
        return self.atom()

    def atom(self) -> Fn:
        tok = self._take()
        if tok == "(":
            self._nest(1)
            fn = self.sum()
            self._take(")")
            self._nest(-1)
            return fn
        if tok.isdigit():
            value = int(tok)
            return lambda names: value
        if tok in ("min", "max"):
            self._take("(")
            self._nest(1)
            a = self.sum()
            self._take(",")
            b = self.sum()
            self._take(")")
            self._nest(-1)
            pick = min if tok == "min" else max
            return lambda names: pick(a(names), b(names))
        if tok[0].isalpha() or tok[0] == "_":
            text = self.text

            def name(names: dict[str, int]) -> int:
                if tok not in names:
                    raise ExprError(f"unknown name {tok!r} in expression {text!r}")
                return int(names[tok])
            return name
        raise ExprError(f"unexpected {tok!r} in expression {self.text!r}")


def _binary(op: str, a: Fn, b: Fn, text: str) -> Fn:
    if op == "+":
        return lambda names: a(names) + b(names)
    if op == "-":
        return lambda names: a(names) - b(names)
    if op == "*":
        return lambda names: a(names) * b(names)

    def divide(names: dict[str, int]) -> int:
        rhs = b(names)
        if rhs == 0:
            raise ExprError(f"division by zero in expression {text!r}")
        lhs = a(names)
        return lhs // rhs if op == "//" else lhs % rhs
    return divide

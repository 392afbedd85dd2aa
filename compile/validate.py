"""Checks every reader of model files shares, because a model file is untrusted input.

Besides what `files` refuses (named pipes, devices, folders, files too large to read whole), a
model file may hold JSON nested deeper than the interpreter's stack or values of the wrong type.
Readers open model files and parse JSON only through here, and check each value with the typed
helpers, so that every bad input is a LutlmError naming the file and the field.
"""

from __future__ import annotations

import json
import os
import reprlib
from pathlib import Path
from typing import Any, BinaryIO

from .errors import LutlmError
from .files import read_bytes

JSON_MAX_BYTES = 64 << 20  # config, tokenizer and manifest files (a large tokenizer.json is ~10 MiB)
JSON_MAX_DEPTH = 64  # real model JSON nests a handful of levels
F32_MAX = 3.4028234663852886e38


def show(value: Any) -> str:
    """A bounded one-line rendering of an untrusted value for an error message."""
    return reprlib.repr(value)


def file_size(f: BinaryIO) -> int:
    return os.fstat(f.fileno()).st_size


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object file of at most JSON_MAX_BYTES (its size checked before reading) and
    JSON_MAX_DEPTH levels."""
    value = parse_json(read_bytes(path, JSON_MAX_BYTES, "JSON file"), str(path))
    if not isinstance(value, dict):
        raise LutlmError(f"{path}: expected a JSON object, not {json_type(value)}")
    return value


def parse_json(raw: bytes, where: str, unique_keys: bool = False) -> Any:
    """UTF-8 JSON of at most JSON_MAX_DEPTH levels; with `unique_keys`, no object names a key twice
    (json.loads would keep the last silently)."""
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique if unique_keys else None)
    except UnicodeDecodeError as exc:
        raise LutlmError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise LutlmError(f"{where}: JSON nested more than {JSON_MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # JSONDecodeError, a repeated key, integers of thousands of digits
        raise LutlmError(f"{where}: invalid JSON ({exc})") from None
    if _too_deep(value):
        raise LutlmError(f"{where}: JSON nested more than {JSON_MAX_DEPTH} levels deep")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"key {show(key)} appears twice")
        obj[key] = value
    return obj


def _too_deep(value: Any) -> bool:
    """Whether `value` nests deeper than JSON_MAX_DEPTH (walked without recursion), so that no later
    recursive walk of it (the tokenizer's, json.dumps when it is written out) can exhaust the stack."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > JSON_MAX_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def json_type(value: Any) -> str:
    """What a JSON value is, as a person would say it."""
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
                       (list, "a list"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def integer(value: Any, what: str, lo: int, hi: int) -> int:
    """`value` if it is an integer (not a bool, not a float, however round) in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise LutlmError(f"{what} must be an integer in [{lo}, {hi}], not {show(value)}")
    return value


def real(value: Any, what: str, lo: float, hi: float) -> float:
    """`value` if it is a number in the open interval (lo, hi): NaN and infinities fail it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo < value < hi:
        raise LutlmError(f"{what} must be a number in ({lo:g}, {hi:g}), not {show(value)}")
    return float(value)


def boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise LutlmError(f"{what} must be true or false, not {show(value)}")
    return value


def string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise LutlmError(f"{what} must be a string, not {show(value)}")
    return value

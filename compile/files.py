"""Reading files a user names: regular files only, their size known before a byte is read.

A named pipe would block forever, a device such as /dev/zero never ends, and a sparse or simply
huge file would be read whole into memory; each is refused with a one-line error instead.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from .errors import LutlmError


def regular_size(path: Path, limit: int, what: str = "file") -> int:
    """The size of `path` if it is a regular file (symlinks followed) of at most `limit` bytes."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise LutlmError(f"{path}: no such file") from None
    except OSError as exc:
        raise LutlmError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise LutlmError(f"{path}: {kind}; expected a {what}")
    if st.st_size > limit:
        raise LutlmError(f"{path}: {st.st_size} bytes, more than the {limit >> 20} MiB a {what} may have")
    return st.st_size


def open_regular(path: Path, what: str = "file", limit: int = 1 << 62) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file (symlinks followed) of at most
    `limit` bytes. O_NONBLOCK keeps a named pipe swapped in after the check from blocking the
    open, and fstat settles it."""
    regular_size(path, limit, what)
    try:
        f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
    except OSError as exc:
        raise LutlmError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise LutlmError(f"{path}: not a regular file; expected a {what}")
    return f


def read_bytes(path: Path, limit: int, what: str = "file") -> bytes:
    """The whole of a regular file of at most `limit` bytes, its size checked before reading and
    read no further than the limit (a file that grows meanwhile is refused)."""
    with open_regular(path, what, limit) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise LutlmError(f"{path}: grew past {limit >> 20} MiB while being read")
    return data


def read_text(path: Path, limit: int, what: str = "text file") -> str:
    """A regular UTF-8 file of at most `limit` bytes as text."""
    data = read_bytes(path, limit, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LutlmError(f"{path}: not UTF-8 text ({exc})") from None

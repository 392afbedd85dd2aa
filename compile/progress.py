"""Progress of long steps (quantising, compiling, exporting): a live status line on a terminal,
and on anything else (a log file, CI) one line per message, at most every `every` seconds, so an
hour-long quantisation run written to a file still says where it is."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, TextIO


@contextmanager
def status(desc: str, stream: TextIO | None = None, every: float = 30.0) -> Iterator[Callable[[str], None]]:
    """Yields a function that reports a message. The stream defaults to sys.stderr as it is when
    called, not as it was at import (tests and embedders replace it)."""
    stream = stream or sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        with tqdm(desc=desc, file=stream, bar_format="{desc}: {elapsed} {postfix}") as bar:
            yield bar.set_postfix_str
        return
    start, last = time.monotonic(), -float("inf")

    def report(msg: str) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every:
            last = now
            print(f"{desc}: {now - start:.0f} s: {msg}", file=stream, flush=True)

    yield report

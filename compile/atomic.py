"""Output folders written all at once, and replaced only when lutlm wrote them.

An interrupted write (Ctrl-C, SIGTERM, an error) leaves no half-written output behind. An existing
folder is replaced only when it is lutlm's own earlier output of the same kind: its marker file
(the kind's manifest) is a JSON object naming the kind's format, and it holds nothing but what
lutlm writes. A folder that merely contains a file of the same name (a web app's
`manifest.json`), the working folder, or anything a user added is refused, never deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import LutlmError

_MARKER_BYTES = 64 << 20  # a marker larger than this is no manifest lutlm wrote


@dataclass(frozen=True)
class OutputKind:
    """What a kind of output folder holds: its marker file, the format named in it, and its entries."""

    what: str  # for messages: "model package", ...
    marker: str
    format: str
    entries: frozenset[str]
    name: re.Pattern[str] | None = None  # what the folder's own name must match, where the output records it

    def owns(self, folder: Path) -> bool:
        """True if `folder` is this kind's output as lutlm writes it (regular files, no symlinks)."""
        marker = folder / self.marker
        try:
            st = os.lstat(marker)
            if not stat.S_ISREG(st.st_mode) or st.st_size > _MARKER_BYTES:
                return False
            data = json.loads(marker.read_bytes())
        except (OSError, ValueError, RecursionError):
            return False
        return isinstance(data, dict) and data.get("format") == self.format

    def check_output(self, out: Path) -> None:
        """Refuse, before any work, an output that is not absent, an empty folder or our own output."""
        out = Path(out)
        if out.is_symlink():
            raise LutlmError(f"{out} is a symbolic link; give the folder itself as the output")
        if out.exists():
            here = Path.cwd().resolve()
            if out.resolve() in (here, *here.parents):
                raise LutlmError(f"{out} is the working folder or holds it; give a new folder as the output")
        if self.name is not None and not self.name.fullmatch(out.name):
            raise LutlmError(f"{out}: the folder's name names the {self.what}: give 1-128 letters, digits, '_', '.' or '-'")
        if not out.exists():
            return
        if not out.is_dir():
            raise LutlmError(f"{out} exists and is not a folder; refusing to overwrite it")
        entries = {p.name for p in out.iterdir()}
        if not entries:
            return
        if not self.owns(out):
            raise LutlmError(f"{out} exists and is not a {self.what} written by lutlm; refusing to overwrite it "
                             "(give a new or empty folder)")
        foreign = sorted(entries - self.entries)
        if foreign:
            raise LutlmError(f"{out} is a {self.what} but also holds {', '.join(foreign[:3])}"
                             f"{' ...' if len(foreign) > 3 else ''}, which lutlm did not write; "
                             "move them away or give another folder")

    @contextlib.contextmanager
    def replacing(self, out: Path) -> Iterator[Path]:
        """Yield a temporary sibling folder; when the block completes it replaces `out` (checked
        again first), when it raises (an interrupt included) it is removed."""
        out = Path(out)
        self.check_output(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        try:
            yield tmp
            self.check_output(out)  # the folder may have changed during minutes of work
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

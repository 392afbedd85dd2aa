"""Assemble the static web app and serve it (and its model packages) on 127.0.0.1.

    OUT/index.html, app.js, worker.js, messages.js, style.css, manifest.webmanifest, icon.svg   from web/
    OUT/sw.js           the service worker, with the app-shell list and a content hash filled in
    OUT/pyodide/        the npm `pyodide` files the worker loads (served by the app itself)
    OUT/runtime_py.zip  runtime_py/*.py, unpacked into Pyodide's file system by the worker
    OUT/cpu/            the CPU kernels' module, one build per SIMD level (lutlm.wasm), for the
                        worker to pick from where WebGPU is missing or software
    OUT/models/NAME/    each model package (symlinked), listed in OUT/models.json
    OUT/.lutlm-site     the marker that makes OUT lutlm's to rebuild (never served)

The server faces a browser, so it trusts nothing it is sent: it answers only requests addressed to
127.0.0.1/localhost (a DNS-rebinding page names its own host), serves only regular files inside
the site folder or inside a folder the site links to (never through a symlink that leaves it),
lists no folders, drops clients that stall, and answers every malformed request with a 4xx.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import io
import json
import mimetypes
import os
import re
import shutil
import socket
import socketserver
import stat
import sys
import threading
import time
import urllib.parse
import zipfile
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import BinaryIO, Iterator

from . import wasm
from .atomic import OutputKind
from .errors import LutlmError

ROOT = Path(__file__).resolve().parent.parent
PYODIDE_FILES = ("pyodide.js", "pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip",
                 "pyodide-lock.json")
MIME = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript", ".json": "application/json",
        ".wgsl": "text/plain; charset=utf-8", ".bin": "application/octet-stream", ".zip": "application/zip",
        ".html": "text/html; charset=utf-8", ".css": "text/css", ".png": "image/png", ".svg": "image/svg+xml",
        ".webmanifest": "application/manifest+json", ".txt": "text/plain; charset=utf-8"}
NATIVE_ONLY = {"gpu_wgpu.py", "cpu_wasmtime.py"}  # the native hosts have no place in the browser
MARKER = ".lutlm-site"
SITE = OutputKind("web app site", MARKER, "lutlm-site", frozenset())  # its marker; `claim` empties it

# The app's policy: this origin only. Pyodide compiles wasm ('wasm-unsafe-eval') and runtime_py's
# run_js evaluates a few JS helpers in the worker ('unsafe-eval'); nothing is inline, no blob: or
# data: URL is needed, nothing comes from elsewhere.
CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval' 'unsafe-eval'; worker-src 'self'; "
       "connect-src 'self'; img-src 'self'; style-src 'self'; object-src 'none'; base-uri 'self'; "
       "form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Cache-Control": "no-cache", "Cross-Origin-Opener-Policy": "same-origin",
           "Cross-Origin-Embedder-Policy": "require-corp", "Cross-Origin-Resource-Policy": "same-origin",
           "X-Content-Type-Options": "nosniff"}
HOST = re.compile(r"(127\.0\.0\.1|localhost|\[::1\])(:[0-9]{1,5})?", re.IGNORECASE)
VERSION = re.compile(r"HTTP/(\d)\.(\d)")
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
RANGE = re.compile(r"bytes=[ \t]*(\d{0,18})-(\d{0,18})[ \t]*")
BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
END_OF_HEAD = re.compile(rb"\r?\n\r?\n")
KEEP_OPEN = {HTTPStatus.NOT_FOUND, HTTPStatus.METHOD_NOT_ALLOWED, HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE}
MAX_LINE = 8 << 10  # request line
MAX_HEAD = 32 << 10  # request line and headers
READ_TIMEOUT_S = 15.0
LINGER_S = 0.2
MAX_CONNECTIONS = 256  # room for the 200 parallel downloads of the load test, still a bound


def runtime_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for src in sorted((ROOT / "runtime_py").glob("*.py")):
            if src.name not in NATIVE_ONLY:
                z.write(src, f"runtime_py/{src.name}")
    return buf.getvalue()


def claim(out: Path, packages: list[Path]) -> None:
    """Make `out` an empty folder marked as lutlm's site. A new or empty folder is claimed; a marked
    one is emptied (everything in it is ours); anything else is refused untouched, so a mistyped
    --out never costs a file."""
    here = Path.cwd().resolve()
    real = out.resolve()
    if real in (here, *here.parents):
        raise LutlmError(f"--out {out}: the working folder or one holding it; give a folder of its own for the site")
    if out.is_symlink():
        raise LutlmError(f"--out {out} is a symbolic link; give the folder itself")
    if out.exists() and not out.is_dir():
        raise LutlmError(f"--out {out} exists and is not a folder; refusing to overwrite it")
    for pkg in packages:
        if real.is_relative_to(pkg.resolve()) or pkg.resolve().is_relative_to(real):
            raise LutlmError(f"--out {out} overlaps the package {pkg}; give the site a folder of its own")
    if out.is_dir() and any(out.iterdir()):
        if not SITE.owns(out):
            raise LutlmError(f"--out {out} is not empty and not a site lutlm built (no {MARKER}); "
                             "refusing to touch it (give a new or empty folder)")
        for entry in out.iterdir():
            if entry.name != MARKER:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()  # links: not followed
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"format": SITE.format, "version": 1}) + "\n", encoding="utf-8")


def name(pkg: Path) -> str:
    """The package's name in the site: its folder's name as given (`.` names the working folder)."""
    return Path(os.path.abspath(pkg)).name


def listing(pkg: Path) -> dict[str, object]:
    """`pkg`'s entry in models.json, read before the site folder is touched, so a bad package
    costs nothing. (`lutlm serve` checked it is a package; the worker validates it fully.)"""
    if name(pkg).startswith("."):
        raise LutlmError(f"{pkg}: the server never serves hidden names; give the package a folder name without a leading '.'")
    try:
        manifest = json.loads((pkg / "manifest.json").read_text(encoding="utf-8"))
        return {"name": name(pkg), "bytes": sum(int(s["bytes"]) for s in manifest["shards"]),
                "bits": manifest["quantization"].get("bits"), "decode": manifest.get("decode")}
    except (OSError, ValueError, RecursionError, KeyError, TypeError, AttributeError) as exc:
        raise LutlmError(f"{pkg / 'manifest.json'}: not a model package manifest ({type(exc).__name__}: {exc})") from None


def build(out: Path, packages: list[Path]) -> Path:
    pyodide = ROOT / "node_modules" / "pyodide"
    if not (pyodide / "pyodide.js").is_file():
        raise LutlmError(f"{pyodide} is missing: run the set-up (npm ci)")
    names = [name(pkg) for pkg in packages]
    if len(set(names)) < len(names):
        raise LutlmError(f"two packages share a folder name ({', '.join(sorted({n for n in names if names.count(n) > 1}))}); "
                         "the site serves each as models/NAME")
    listed = [listing(pkg) for pkg in packages]
    kernels = {level: wasm.build(level) for level in wasm.LEVELS}  # before the site is touched: may fail
    claim(out, packages)
    for src in (ROOT / "web").iterdir():
        if src.is_file() and src.name != "README.md":  # the folder's documentation is not part of the app
            shutil.copy2(src, out / src.name)
    (out / "pyodide").mkdir()
    for file in PYODIDE_FILES:
        shutil.copy2(pyodide / file, out / "pyodide" / file)
    (out / "runtime_py.zip").write_bytes(runtime_zip())
    (out / "cpu").mkdir()
    for level, module in kernels.items():  # precached with the shell below: the CPU path works offline too
        shutil.copy2(module, out / "cpu" / f"lutlm-cpu-{level}.wasm")
    (out / "models").mkdir()
    for pkg in packages:
        (out / "models" / name(pkg)).symlink_to(pkg.resolve(), target_is_directory=True)
    (out / "models.json").write_text(json.dumps(listed, indent=1), encoding="utf-8")
    shell = ["./"] + sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                            if p.is_file() and not p.name.startswith(".")
                            and "models" not in p.relative_to(out).parts and p.name != "sw.js")
    digest = hashlib.sha256(b"".join((out / f).read_bytes() for f in shell[1:])).hexdigest()[:16]
    sw = (ROOT / "web" / "sw.js").read_text(encoding="utf-8")
    (out / "sw.js").write_text(sw.replace("__BUILD__", digest).replace("__SHELL__", json.dumps(shell)), encoding="utf-8")
    return out


class Site:
    """The files the server may answer with: regular files inside the site folder, and inside each
    folder (or file) a symlink in the site folder points to: a package `build` linked, a peer's
    npm folder a benchmark linked. A path is resolved fully and must stay inside the folder its
    URL names, so a package's own `rootfs -> /` leads nowhere. The links are read once, when the
    server starts; one added later is no mount, and leaving the site folder through it is refused."""

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.mounts = dict(_links(self.root))

    def file(self, parts: tuple[str, ...]) -> str | None:
        """The real path `parts` names, or None if it names nothing the site may serve."""
        if parts == ("",):
            parts = ("index.html",)
        if any(p == "" or p.startswith(".") for p in parts):  # folders and hidden files are never served
            return None
        for n in range(len(parts), 0, -1):
            if parts[:n] in self.mounts:
                return _inside(self.mounts[parts[:n]], parts[n:])
        return _inside(self.root, parts)


def _links(root: str) -> Iterator[tuple[tuple[str, ...], str]]:
    """(URL path parts, real target) of each symlink in the site folder; not followed further."""
    for folder, dirs, files in os.walk(root):
        for entry in dirs + files:
            path = os.path.join(folder, entry)
            if os.path.islink(path) and os.path.exists(path):
                yield tuple(Path(path).relative_to(root).parts), os.path.realpath(path)


def _inside(base: str, parts: tuple[str, ...]) -> str | None:
    real = os.path.realpath(os.path.join(base, *parts))
    return real if real == base or real.startswith(base.rstrip(os.sep) + os.sep) else None


class Refusal(Exception):
    """A request answered with an error status instead of a file."""

    def __init__(self, status: HTTPStatus, headers: dict[str, str] | None = None) -> None:
        super().__init__(status.phrase)
        self.status, self.headers = status, headers or {}


@dataclass
class Request:
    method: str
    version: tuple[int, int]
    parts: tuple[str, ...]
    headers: dict[str, list[str]]  # lower-case names

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None


def parse(head: bytes) -> Request:
    """The request line and headers of `head`, checked strictly: anything a browser would not send
    is a Refusal, never a guess."""
    lines = re.split(rb"\r?\n", head)
    words = lines[0].split(b" ")
    if len(words) != 3 or any(b < 0x21 or b > 0x7e for w in words for b in w):
        raise Refusal(HTTPStatus.BAD_REQUEST)
    method, target, version = (w.decode("ascii") for w in words)
    ver = VERSION.fullmatch(version)
    if not TOKEN.fullmatch(method) or not ver:
        raise Refusal(HTTPStatus.BAD_REQUEST)
    if ver.group(1) != "1":
        raise Refusal(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED)
    headers = _headers(lines[1:])
    hosts = headers.get("host", [])
    if len(hosts) > 1:
        raise Refusal(HTTPStatus.BAD_REQUEST)
    # a page of another site that DNS rebinding points at 127.0.0.1 still names its own host
    if (hosts or ver.group(2) != "0") and not (hosts and HOST.fullmatch(hosts[0])):
        raise Refusal(HTTPStatus.MISDIRECTED_REQUEST)
    if method not in ("GET", "HEAD"):
        raise Refusal(HTTPStatus.METHOD_NOT_ALLOWED, {"Allow": "GET, HEAD"})
    return Request(method, (1, int(ver.group(2))), _path(target), headers)


def _headers(lines: list[bytes]) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for raw in lines:
        name, colon, value = raw.decode("latin-1").partition(":")
        if not colon or not TOKEN.fullmatch(name) or any(c in value for c in "\0\r\n"):
            raise Refusal(HTTPStatus.BAD_REQUEST)  # also folded lines and a space before the colon
        headers.setdefault(name.lower(), []).append(value.strip(" \t"))
    return headers


def _path(target: str) -> tuple[str, ...]:
    """The decoded segments of an origin-form target: '/a/b%20c?q' -> ('a', 'b c')."""
    path = target.split("?", 1)[0]
    if not path.startswith("/") or BAD_ESCAPE.search(path):
        raise Refusal(HTTPStatus.BAD_REQUEST)
    try:
        text = urllib.parse.unquote_to_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(HTTPStatus.BAD_REQUEST) from None
    parts = tuple(text[1:].split("/"))
    if any(ord(c) < 0x20 or c in "\x7f\\" for c in text) or any(p in (".", "..") for p in parts):
        raise Refusal(HTTPStatus.BAD_REQUEST)
    return parts


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, stop) of a single `bytes=` range, None to send the whole file (no Range, several
    ranges or a malformed one: RFC 9110 lets a server ignore those); Refusal 416 if unsatisfiable."""
    m = RANGE.fullmatch(header) if header else None
    if m is None or m.groups() == ("", ""):
        return None
    first, last = m.groups()
    if first and last and int(last) < int(first):
        return None
    start = max(0, size - int(last)) if not first else int(first)
    stop = size if not first or not last else min(size, int(last) + 1)
    if start >= size or (not first and int(last) == 0):
        raise Refusal(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, {"Content-Range": f"bytes */{size}"})
    return start, stop


def too_long(head: bytes) -> None:
    """Refuse a request line over MAX_LINE (414) or a head over MAX_HEAD (431)."""
    if len(head.split(b"\n", 1)[0]) > MAX_LINE:
        raise Refusal(HTTPStatus.REQUEST_URI_TOO_LONG)
    if len(head) > MAX_HEAD:
        raise Refusal(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)


def open_regular(real: str | None) -> BinaryIO:
    """`real` opened for reading if it is a regular file (O_NONBLOCK: a FIFO must not hang the
    thread; O_NOFOLLOW: no link swapped in since it was resolved), else Refusal 404."""
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC) if real else -1
    except OSError:
        fd = -1
    if fd >= 0 and stat.S_ISREG(os.fstat(fd).st_mode):
        return open(fd, "rb")
    if fd >= 0:
        os.close(fd)  # a folder, a FIFO, a device: nothing to send
    raise Refusal(HTTPStatus.NOT_FOUND)


def content_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return MIME.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"


class Handler(BaseHTTPRequestHandler):
    """One connection: requests read within a deadline, files sent with sendfile (never read whole),
    errors answered with a short text; a client that goes away or stalls is dropped quietly."""

    server: Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.read_timeout)
        self.pending = b""
        self.request_version, self.command, self.requestline = "HTTP/1.1", "", ""

    def log_message(self, *args: object) -> None:
        pass

    def version_string(self) -> str:
        return "lutlm"

    def handle(self) -> None:
        self.close_connection = False
        try:
            while not self.close_connection:
                self.handle_one_request()
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stopped reading

    def handle_one_request(self) -> None:
        self.close_connection, self.command, self.answered = True, "", False
        try:
            head = self.read_head()
            if head is None:
                return
            request = parse(head)
            self.command, self.request_version = request.method, "HTTP/1.%d" % request.version[1]
            self.close_connection = not self.keeps_alive(request)
            self.send_file(request)
        except Refusal as refusal:
            self.refuse(refusal)
        except Exception:
            if not self.answered:  # a bug still gets an answer, and its traceback on stderr
                self.refuse(Refusal(HTTPStatus.INTERNAL_SERVER_ERROR))
            raise

    def read_head(self) -> bytes | None:
        """The request line and headers, which must arrive whole within one read timeout (a client
        trickling a byte at a time is dropped like a silent one); None if the client closed or
        stalled before sending anything."""
        deadline = time.monotonic() + self.server.read_timeout
        while not (end := END_OF_HEAD.search(self.pending, 0, MAX_HEAD + 4)):
            if len(self.pending) > MAX_HEAD:
                too_long(self.pending)
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                self.connection.settimeout(left)
                chunk = self.connection.recv(64 << 10)
            except TimeoutError:
                if self.pending.strip():
                    raise Refusal(HTTPStatus.REQUEST_TIMEOUT) from None
                return None
            if not chunk:
                return None
            self.pending += chunk
        self.connection.settimeout(self.server.read_timeout)
        head, self.pending = self.pending[:end.start()], self.pending[end.end():]
        too_long(head)
        if not head.strip():
            raise Refusal(HTTPStatus.BAD_REQUEST)
        return head

    def keeps_alive(self, request: Request) -> bool:
        """HTTP/1.1 without `Connection: close` and without a body (GET and HEAD need none, and
        one left unread would be taken for the next request)."""
        tokens = {t.strip().lower() for v in request.headers.get("connection", []) for t in v.split(",")}
        body = request.header("content-length") not in (None, "0") or "transfer-encoding" in request.headers
        return request.version >= (1, 1) and "close" not in tokens and not body

    def send_file(self, request: Request) -> None:
        with open_regular(self.server.site.file(request.parts)) as f:
            st = os.fstat(f.fileno())
            if self.not_modified(request, st.st_mtime):
                self.send_response(HTTPStatus.NOT_MODIFIED)
                self.end_headers()
                return
            span = None if request.header("if-range") else byte_range(request.header("range"), st.st_size)
            start, stop = span or (0, st.st_size)
            self.send_response(HTTPStatus.PARTIAL_CONTENT if span else HTTPStatus.OK)
            self.send_header("Content-Type", content_type(request.parts[-1] or "index.html"))
            self.send_header("Content-Length", str(stop - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            if span:
                self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{st.st_size}")
            self.end_headers()
            if request.method == "GET" and stop > start and self.connection.sendfile(f, start, stop - start) != stop - start:
                self.close_connection = True  # the file shrank while being sent: the length was a lie

    def not_modified(self, request: Request, mtime: float) -> bool:
        since = request.header("if-modified-since")
        if since is None or "if-none-match" in request.headers or "range" in request.headers:
            return False
        try:
            return int(mtime) <= email.utils.parsedate_to_datetime(since).timestamp()
        except (TypeError, ValueError, OverflowError):
            return False

    def refuse(self, refusal: Refusal) -> None:
        """A short plain-text answer; the connection closes unless the request itself was sound."""
        if refusal.status not in KEEP_OPEN:
            self.close_connection = True
        body = f"{refusal.status.value} {refusal.status.phrase}\n".encode()
        self.send_response(refusal.status)
        for name, value in refusal.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def end_headers(self) -> None:
        for name, value in HEADERS.items():
            self.send_header(name, value)
        self.send_header("Content-Security-Policy", self.server.csp)
        super().end_headers()
        self.answered = True


class Server(socketserver.ThreadingTCPServer):
    """A thread per connection, at most `max_connections` at once: the rest wait in a deep listen
    queue (accepted late, never refused), and every thread is freed by the read timeout."""

    daemon_threads = True
    block_on_close = False  # closing never waits for a stalled client's read timeout
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, site: Site, port: int, read_timeout: float, max_connections: int, csp: str) -> None:
        self.site, self.read_timeout, self.csp = site, read_timeout, csp
        self.slots = threading.BoundedSemaphore(max_connections)
        self.closing = threading.Event()
        super().__init__(("127.0.0.1", port), Handler)

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        while not self.slots.acquire(timeout=0.2):
            if self.closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        """Quiet for clients that went away; anything else is a bug worth its traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:  # type: ignore[override]
        """Close after reading what the client still sends (briefly, boundedly): closing on unread
        bytes makes the kernel reset the connection, and the client loses the answer (a 431 say)."""
        deadline = time.monotonic() + LINGER_S
        try:
            request.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                request.settimeout(left)
                if not request.recv(64 << 10):
                    break
        except OSError:
            pass
        self.close_request(request)

    def shutdown(self) -> None:
        self.closing.set()
        super().shutdown()

    def server_close(self) -> None:
        self.closing.set()
        super().server_close()


def server(root: Path, port: int = 0, read_timeout: float = READ_TIMEOUT_S,
           max_connections: int = MAX_CONNECTIONS, csp: str = CSP) -> Server:
    """The site at `root` on 127.0.0.1:`port` (0: a free port), not yet serving. `csp`: the app's
    policy unless the site holds other pages (a benchmark's peers start workers from blob: URLs)."""
    return Server(Site(root), port, read_timeout, max_connections, csp)


@contextlib.contextmanager
def serving(root: Path, read_timeout: float = READ_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS,
            csp: str = CSP) -> Iterator[str]:
    """`root` served in a background thread on a free 127.0.0.1 port; yields the base URL."""
    srv = server(root, 0, read_timeout, max_connections, csp)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()
        srv.server_close()

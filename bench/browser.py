"""The harness's pages (bench/web) served from 127.0.0.1 and opened in the product's headless
Chromium (lutlm.headless), and the memory a page holds."""

from __future__ import annotations

import contextlib
import functools
import http.server
import mimetypes
import threading
from pathlib import Path
from typing import Iterator

from lutlm.headless import chromium


class _Handler(http.server.SimpleHTTPRequestHandler):
    extra: dict[str, str] = {}

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        name = self.path.split("?")[0].lstrip("/")
        if name in self.extra:
            body = self.extra[name].encode()
            self.send_response(200)
            self.send_header("Content-Type", mimetypes.guess_type(name)[0] or "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()


@contextlib.contextmanager
def serve(root: Path, extra: dict[str, str] | None = None) -> Iterator[str]:
    """Serve `root` (plus in-memory files) on 127.0.0.1 at a free port; yields the base URL."""
    handler = type("Handler", (_Handler,), {"extra": dict(extra or {})})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def memory_bytes(page: object) -> int | None:
    """Bytes Chromium's performance.measureUserAgentSpecificMemory attributes to the page (its JS
    heaps; workers' wasm memories do not appear in it here); None where the page is not
    cross-origin isolated or the browser lacks it."""
    return page.evaluate("async () => self.crossOriginIsolated && performance.measureUserAgentSpecificMemory"
                         " ? (await performance.measureUserAgentSpecificMemory()).bytes : null")


@contextlib.contextmanager
def serve_and_open(root: Path, page_name: str, extra: dict[str, str] | None = None) -> Iterator[object]:
    with serve(root, extra) as base, chromium() as context:
        page = context.new_page()
        page.goto(base + page_name)
        yield page

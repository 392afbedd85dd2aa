"""Assemble the static web app and serve it (and its model packages) on 127.0.0.1.

    OUT/index.html, app.js, worker.js, style.css, manifest.webmanifest, icon.svg   from web/
    OUT/sw.js           the service worker, with the app-shell list and a content hash filled in
    OUT/pyodide/        the npm `pyodide` files the worker loads (served by the app itself)
    OUT/runtime_py.zip  runtime_py/*.py, unpacked into Pyodide's file system by the worker
    OUT/models/NAME/    each model package (symlinked), listed in OUT/models.json
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import json
import shutil
import zipfile
import threading
from pathlib import Path
from typing import Iterator

from .errors import LutlmError

ROOT = Path(__file__).resolve().parent.parent
PYODIDE_FILES = ("pyodide.js", "pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip",
                 "pyodide-lock.json")
MIME = {".wasm": "application/wasm", ".mjs": "text/javascript", ".js": "text/javascript", ".json": "application/json",
        ".wgsl": "text/plain; charset=utf-8", ".bin": "application/octet-stream", ".zip": "application/zip",
        ".html": "text/html; charset=utf-8", ".css": "text/css", ".png": "image/png",
        ".webmanifest": "application/manifest+json"}


def runtime_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for src in sorted((ROOT / "runtime_py").glob("*.py")):
            if src.name != "gpu_wgpu.py":  # the native backend has no place in the browser
                z.write(src, f"runtime_py/{src.name}")
    return buf.getvalue()


def build(out: Path, packages: list[Path]) -> Path:
    pyodide = ROOT / "node_modules" / "pyodide"
    if not (pyodide / "pyodide.js").is_file():
        raise LutlmError(f"{pyodide} is missing: run the set-up (npm ci)")
    out.mkdir(parents=True, exist_ok=True)
    for src in (ROOT / "web").iterdir():
        if src.is_file():
            shutil.copy2(src, out / src.name)
    (out / "pyodide").mkdir(exist_ok=True)
    for name in PYODIDE_FILES:
        shutil.copy2(pyodide / name, out / "pyodide" / name)
    (out / "runtime_py.zip").write_bytes(runtime_zip())
    models = out / "models"
    if models.exists():
        shutil.rmtree(models)
    models.mkdir()
    listed = []
    for pkg in packages:
        manifest = json.loads((pkg / "manifest.json").read_text(encoding="utf-8"))
        (models / pkg.name).symlink_to(pkg.resolve(), target_is_directory=True)
        listed.append({"name": pkg.name, "bytes": sum(s["bytes"] for s in manifest["shards"]),
                       "bits": manifest["quantization"].get("bits"), "decode": manifest.get("decode")})
    (out / "models.json").write_text(json.dumps(listed, indent=1), encoding="utf-8")
    shell = ["./"] + sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                            if p.is_file() and "models" not in p.relative_to(out).parts and p.name != "sw.js")
    digest = hashlib.sha256(b"".join((out / f).read_bytes() for f in shell[1:])).hexdigest()[:16]
    sw = (ROOT / "web" / "sw.js").read_text(encoding="utf-8")
    (out / "sw.js").write_text(sw.replace("__BUILD__", digest).replace("__SHELL__", json.dumps(shell)), encoding="utf-8")
    return out


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with the MIME types the app needs; no caching surprises while developing."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME}

    def log_message(self, *args: object) -> None:
        pass

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        super().end_headers()


def server(root: Path, port: int = 0) -> http.server.ThreadingHTTPServer:
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=str(root)))


@contextlib.contextmanager
def serving(root: Path) -> Iterator[str]:
    """`root` served in a background thread on a free 127.0.0.1 port; yields the base URL."""
    srv = server(root)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()
        srv.server_close()

"""What the web worker (web/worker.js) asks of Python, as a few named calls over JSON text.

    files = json.loads(package_files("/package"))      # the manifest validated, before any download
    session = Session()
    info = json.loads(await session.load("/package"))  # onto the browser's WebGPU by default
    info = json.loads(await session.load("/package", device="cpu",   # or on the CPU kernels
                                         wasm=cpu_js.JsModule(instance, level)))
    await session.chat(json.dumps({"messages": [...], "temperature": 0}), emit)
    session.stop(); session.reset()

The worker writes a package's files into Pyodide's in-memory file system and the runtime reads
them from there exactly as it reads a package folder natively (`package.folder_reader`), so
everything here also runs, and is tested, natively. Values cross into JavaScript as JSON text:
text converts by itself, so no Python object has to be proxied into the worker and freed there.
The messages the worker builds from these values are described in web/messages.js.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from .api import LutLM
from .cpu import CpuBackend, Wasm
from .engine import GenerationError
from .gpu import GPUError
from .package import folder_reader, read_manifest


def package_files(folder: str) -> str:
    """The files to fetch for the package whose manifest.json is in `folder`, as JSON
    {"files": [...], "shards": [...]} of {file, bytes, sha256} (shards apart: they are the bulk,
    what a progress bar counts). The manifest is validated whole first, so a package this runtime
    does not read (another format or version: the PackageError names both) costs no download."""
    manifest = read_manifest(folder_reader(folder))
    shards = {s["file"] for s in manifest["shards"]}
    entries = list(manifest.files.values())
    return json.dumps({"files": [e for e in entries if e["file"] not in shards],
                       "shards": [e for e in entries if e["file"] in shards]})


class Session:
    """The model the worker has loaded (none at first) and the requests it serves. The worker
    queues requests, so at most one load or chat runs at a time; `stop` may come meanwhile."""

    def __init__(self) -> None:
        self.llm: LutLM | None = None

    async def load(self, folder: str, ctx: int | None = None, backend: Any = None, device: str = "webgpu",
                   wasm: Wasm | None = None) -> str:
        """Load the package in `folder`, in place of any model loaded before, onto `backend` if one
        is given (natively: the tests'), else onto `device`: "webgpu", the browser's (its module
        needs Pyodide), or "cpu", the CPU kernels' module `wasm` (in the browser the worker's
        instance through `cpu_js`; the worker resolves the page's "auto" to one of the two).
        Returns JSON {model, ctx, adapter, gpu_bytes}: what the page shows, and benchmarks
        record (gpu_bytes: what the backend allocated, GPU buffers or the module's memory)."""
        if backend is None:
            backend = await _backend(device, wasm)
        self.llm = LutLM.from_folder(folder, backend, ctx)
        return json.dumps({"model": self.llm.model, "ctx": self.llm.engine.ctx, "adapter": backend.info,
                           "gpu_bytes": backend.allocated["bytes"]})

    async def chat(self, request: str, emit: Callable[[str], Any]) -> None:
        """Answer `request`, an OpenAI chat-completions request body as JSON text (messages and
        sampling parameters), streamed: `emit` gets each chunk as JSON text, the last one with the
        finish_reason and usage. Errors are LutLM's (GenerationError for a bad parameter)."""
        if self.llm is None:
            raise GenerationError("no model is loaded: load one first")
        body = json.loads(request)
        if not isinstance(body, dict):
            raise GenerationError("a chat request is a JSON object of OpenAI's parameters")
        async for chunk in await self.llm.chat.completions.create(**{**body, "stream": True}):
            emit(json.dumps(chunk))

    def stop(self) -> None:
        """Stop the running chat before its next token (its finish_reason is "abort")."""
        if self.llm is not None:
            self.llm.interrupt()

    def reset(self) -> None:
        """Start a new conversation: the next chat prefills from an empty cache."""
        if self.llm is not None:
            self.llm.reset()


async def _backend(device: str, wasm: Wasm | None) -> Any:
    if device == "webgpu":
        from .gpu_js import JsBackend

        return await JsBackend.create()
    if device == "cpu":
        if wasm is None:
            raise GPUError("the CPU backend needs its kernels' module, and none was given")
        return CpuBackend(wasm)
    raise GPUError(f"unknown device {device!r}: webgpu or cpu")

// The Web Worker that hosts Pyodide and runtime_py. Messages in: {type: "load", model, ctx},
// {type: "chat", id, messages, params}, {type: "stop"}. Messages out: {type: "progress", ...},
// {type: "ready", ...}, {type: "chunk", id, text}, {type: "done", id, finish, usage},
// {type: "error", message}. The page stays responsive: everything heavy happens here.
import { loadPyodide } from "./pyodide/pyodide.mjs";

let pyodide = null;
let busy = Promise.resolve();
const files = new Map(); // package-relative path -> Uint8Array

function post(msg) { self.postMessage(msg); }

async function fetchBytes(url, onBytes) {
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`${url}: HTTP ${resp.status}`);
  if (!resp.body || !onBytes) return new Uint8Array(await resp.arrayBuffer());
  const reader = resp.body.getReader();
  const parts = [];
  let got = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    got += value.length;
    onBytes(value.length);
  }
  const out = new Uint8Array(got);
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

const MODEL_CACHE = "lutlm-models-v1";
const FORMAT = "lutlm-package";
const VERSION = 2;

async function sha256hex(data) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// A package file from the Cache API if it is there and intact, else from the server (then kept).
// `entry` is the manifest's {bytes, sha256} for the file (null for the manifest itself): a cached
// file that fails them is dropped and fetched again; a download that fails them is an error.
async function packageFile(cache, url, entry, onBytes) {
  const ok = async (data) => !entry || (data.length === entry.bytes && await sha256hex(data) === entry.sha256);
  const hit = await cache.match(url);
  if (hit) {
    const data = new Uint8Array(await hit.arrayBuffer());
    if (await ok(data)) { if (onBytes) onBytes(data.length); return data; }
    await cache.delete(url);
    post({ type: "notice", message: `${url.split("/").slice(-2).join("/")} in the cache was damaged: downloading it again` });
  }
  const data = await fetchBytes(url, onBytes);
  if (!(await ok(data))) throw new Error(`${url}: the download does not match the package's sha256; try again`);
  try {
    await cache.put(url, new Response(data));
  } catch (err) {
    post({ type: "notice", message: `Storage is full (${err.name}): the model works now but will be downloaded again next time` });
  }
  return data;
}

async function load(model, ctx) {
  post({ type: "progress", stage: "python", done: 0, total: 1 });
  if (!pyodide) { // a second load (another model, or after a lost device) reuses the interpreter
    pyodide = await loadPyodide({ indexURL: new URL("pyodide/", self.location).href });
    pyodide.unpackArchive(await fetchBytes("runtime_py.zip"), "zip", { extractDir: "/lutlm" });
    pyodide.runPython("import sys; sys.path.insert(0, '/lutlm')");
  }
  const base = new URL(`models/${model}/`, self.location).href;
  const cache = await caches.open(MODEL_CACHE);
  const manifestBytes = await packageFile(cache, base + "manifest.json", null);
  const manifest = JSON.parse(new TextDecoder().decode(manifestBytes));
  if (manifest.format !== FORMAT || manifest.version !== VERSION) {
    await cache.delete(base + "manifest.json");
    const older = manifest.format === FORMAT && manifest.version < VERSION ? " (compile the model again with this lutlm)" : "";
    throw new Error(`this model package is ${manifest.format} version ${manifest.version}; this app reads ${FORMAT} version ${VERSION}${older}`);
  }
  files.set("manifest.json", manifestBytes);
  self.lutlmRead = (path) => {
    const data = files.get(path);
    if (!data) throw new Error(`${path}: not part of the package`);
    return data;
  };
  try { // every field, before anything else is downloaded
    pyodide.runPython("import js\nfrom runtime_py.package import parse_manifest\nparse_manifest(bytes(js.lutlmRead('manifest.json').to_py()))");
  } catch (err) {
    await cache.delete(base + "manifest.json");
    throw err;
  }
  // every file against the manifest's bytes and sha256 (runtime_py checks them again as it reads)
  for (const entry of [manifest.tokenizer, ...Object.values(manifest.kernels)]) {
    files.set(entry.file, await packageFile(cache, base + entry.file, entry));
  }
  const total = manifest.shards.reduce((a, s) => a + s.bytes, 0);
  let done = 0;
  for (const s of manifest.shards) {
    files.set(s.file, await packageFile(cache, base + s.file, s, (n) => {
      done += n;
      post({ type: "progress", stage: "download", done, total, file: s.file });
    }));
  }
  post({ type: "progress", stage: "gpu", done: total, total });
  const info = await pyodide.runPythonAsync(`
import json
import js
from runtime_py.api import LutLM
from runtime_py.gpu_js import JsBackend

def _read(path, size):
    return bytes(js.lutlmRead(path).to_py())

backend = await JsBackend.create()
llm = LutLM.from_files(_read, backend, ${Number(ctx) || 0} or None)
json.dumps({"model": llm.model, "ctx": llm.engine.ctx, "adapter": backend.info, "gpu_bytes": backend.allocated["bytes"]})
`);
  files.clear(); // the GPU has the weights now
  post({ type: "ready", ...JSON.parse(info) });
}

async function chat(id, messages, params) {
  self.lutlmRequest = { id, messages: JSON.stringify(messages), params: JSON.stringify(params || {}) };
  await pyodide.runPythonAsync(`
import json
import js
from pyodide.ffi import to_js

_req = js.lutlmRequest
_id = _req.id
async for _chunk in await llm.chat.completions.create(messages=json.loads(_req.messages), stream=True,
                                                      **json.loads(_req.params)):
    _choice = _chunk["choices"][0]
    _text = _choice["delta"].get("content", "")
    if _text:
        js.postMessage(to_js({"type": "chunk", "id": _id, "text": _text}, dict_converter=js.Object.fromEntries))
    if _choice["finish_reason"]:
        import pyodide_js  # the wasm heap (Python's memory: tokens, cache bookkeeping) is in no JS heap figure
        js.postMessage(to_js({"type": "done", "id": _id, "finish": _choice["finish_reason"],
                              "usage": json.dumps(_chunk.get("usage")), "wasm_bytes": pyodide_js._module.HEAP8.length},
                             dict_converter=js.Object.fromEntries))
`);
}

self.onmessage = (e) => {
  const msg = e.data;
  if (msg.type === "stop") {
    if (pyodide) pyodide.runPython("llm.interrupt()");
    return;
  }
  if (msg.type === "reset") {
    busy = busy.then(() => { if (pyodide) pyodide.runPython("llm.reset()"); });
    return;
  }
  busy = busy.then(async () => {
    try {
      if (msg.type === "load") await load(msg.model, msg.ctx);
      else if (msg.type === "chat") await chat(msg.id, msg.messages, msg.params);
    } catch (err) {
      const text = String((err && err.message) || err);
      // Python errors arrive as a traceback: the last line says what went wrong
      post({ type: "error", id: msg.id, message: text.trim().split("\n").pop() });
    }
  });
};

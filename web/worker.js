// The Web Worker that hosts Pyodide and runtime_py: it serves the page's requests (messages.js)
// by fetching a model package into the Cache API and calling runtime_py.browser, which holds all
// the Python. Everything heavy happens here, so the page stays responsive.
import { loadPyodide } from "./pyodide/pyodide.mjs";
import * as msg from "./messages.js";

// Where a package's files are written in Pyodide's in-memory file system, for runtime_py to read
// as a package folder; removed once the backend holds the weights.
const STAGE = "/package";
// The CPU kernels' builds (compile/webapp.py puts them in cpu/), best first: relaxed SIMD where the
// browser takes it (a module with one relaxed instruction does not compile elsewhere), else SIMD128.
const CPU_LEVELS = ["relaxed", "simd128"];

let pyodide = null;
let browser = null; // the runtime_py.browser module
let cpuJs = null; // the runtime_py.cpu_js module
let session = null; // its Session: the model this worker has loaded
let cpuKernels = null; // {module, level}: compiled once; each load instantiates it afresh
let busy = Promise.resolve(); // requests run one at a time, in order
const staged = []; // paths written under STAGE

function post(message) { self.postMessage(message); }

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

async function sha256hex(data) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", data));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

// A package file from the Cache API if it is there and intact, else from the server (then kept).
// `entry` is the manifest's {bytes, sha256} for the file (null for the manifest itself): a cached
// file that fails them is dropped and fetched again; a download that fails them is an error.
// Notices go out as replies to request `id`.
async function packageFile(id, cache, url, entry, onBytes) {
  const ok = async (data) => !entry || (data.length === entry.bytes && await sha256hex(data) === entry.sha256);
  const hit = await cache.match(url);
  if (hit) {
    const data = new Uint8Array(await hit.arrayBuffer());
    if (await ok(data)) { if (onBytes) onBytes(data.length); return data; }
    await cache.delete(url);
    post(msg.notice(id, `${url.split("/").slice(-2).join("/")} in the cache was damaged: downloading it again`));
  }
  const data = await fetchBytes(url, onBytes);
  if (!(await ok(data))) throw new Error(`${url}: the download does not match the package's sha256; try again`);
  try {
    await cache.put(url, new Response(data));
  } catch (err) {
    post(msg.notice(id, `Storage is full (${err.name}): the model works now but will be downloaded again next time`));
  }
  return data;
}

function stage(path, data) {
  const full = `${STAGE}/${path}`;
  pyodide.FS.mkdirTree(full.slice(0, full.lastIndexOf("/")));
  pyodide.FS.writeFile(full, data);
  staged.push(full);
}

function unstage() {
  for (const path of staged.splice(0)) pyodide.FS.unlink(path);
}

// Pyodide with runtime_py importable; `session` is set last, so a start that failed is tried again.
async function startPython() {
  pyodide = await loadPyodide({ indexURL: new URL("pyodide/", self.location).href });
  pyodide.unpackArchive(await fetchBytes("runtime_py.zip"), "zip", { extractDir: "/lutlm" });
  pyodide.pyimport("sys").path.insert(0, "/lutlm");
  browser = pyodide.pyimport("runtime_py.browser");
  cpuJs = pyodide.pyimport("runtime_py.cpu_js");
  session = browser.Session();
}

// "auto": WebGPU on a hardware adapter. A fallback adapter (SwiftShader: the GPU emulated on the
// CPU) is far slower than the CPU kernels (SmolLM2-135M 4-bit in headless Chromium: 2.5 against
// 21-41 tokens/s decode), and no WebGPU at all leaves only them.
async function pickDevice(device) {
  if (device === msg.Device.WEBGPU || device === msg.Device.CPU) return device;
  if (device !== msg.Device.AUTO) throw new TypeError(`unknown device ${device}: auto, webgpu or cpu`);
  const adapter = navigator.gpu ? await navigator.gpu.requestAdapter().catch(() => null) : null;
  if (!adapter) return msg.Device.CPU;
  const info = adapter.info || {};
  const names = [info.vendor, info.architecture, info.device, info.description].join(" ");
  const software = adapter.isFallbackAdapter || info.isFallbackAdapter || /swiftshader/i.test(names);
  return software ? msg.Device.CPU : msg.Device.WEBGPU;
}

// A fresh instance of the best CPU build this browser validates, as runtime_py.cpu_js's Wasm: a new
// one per load, so a model loaded before takes its memory with it (the module never frees any).
async function cpuModule() {
  for (const level of cpuKernels ? [] : CPU_LEVELS) {
    const bytes = await fetchBytes(`cpu/lutlm-cpu-${level}.wasm`);
    if (WebAssembly.validate(bytes)) {
      cpuKernels = { module: await WebAssembly.compile(bytes), level };
      break;
    }
  }
  if (!cpuKernels) throw new Error("this browser lacks WebAssembly SIMD, which the CPU backend needs: " +
    "use a recent Chrome, Edge, Firefox or Safari, or a device with WebGPU");
  const instance = await WebAssembly.instantiate(cpuKernels.module, {});
  return cpuJs.JsModule(instance, cpuKernels.level);
}

async function load(id, model, ctx, device) {
  post(msg.progress(id, msg.Stage.PYTHON, 0, 1));
  if (!session) await startPython(); // a second load (another model, or after a lost device) reuses it
  // the backend before any download: a browser that cannot run the model costs none
  const on = await pickDevice(device);
  const wasm = on === msg.Device.CPU ? await cpuModule() : null;
  const base = new URL(`models/${model}/`, self.location).href;
  const cache = await caches.open(msg.MODEL_CACHE);
  try {
    stage("manifest.json", await packageFile(id, cache, base + "manifest.json", null));
    let files;
    try { // every field, the format and its version, before anything else is downloaded
      files = JSON.parse(browser.package_files(STAGE));
    } catch (err) {
      await cache.delete(base + "manifest.json");
      throw err;
    }
    // every file against the manifest's bytes and sha256 (runtime_py checks them again as it reads)
    for (const entry of files.files) stage(entry.file, await packageFile(id, cache, base + entry.file, entry));
    const total = files.shards.reduce((a, s) => a + s.bytes, 0);
    let done = 0;
    for (const s of files.shards) {
      stage(s.file, await packageFile(id, cache, base + s.file, s, (n) => {
        done += n;
        post(msg.progress(id, msg.Stage.DOWNLOAD, done, total, s.file));
      }));
    }
    post(msg.progress(id, msg.Stage.GPU, total, total));
    // only the arguments given: a JavaScript null reaches Python as jsnull, not None
    const args = { device: on, ...(Number(ctx) && { ctx: Number(ctx) }), ...(wasm && { wasm }) };
    const info = await session.load.callKwargs(STAGE, args);
    post(msg.ready(id, JSON.parse(info)));
  } finally {
    unstage();
    if (wasm) wasm.destroy(); // this proxy only: Python keeps its own reference
  }
}

async function chat(id, request) {
  await session.chat(JSON.stringify(request), (text) => post(msg.chunk(id, JSON.parse(text))));
  // the wasm heap (Python's memory: tokens, cache bookkeeping) is in no JS heap figure
  post(msg.done(id, pyodide._module.HEAP8.length));
}

// A failed request's code and message. A Python exception arrives as a PythonError carrying its
// class name and a traceback, whose last line says what went wrong.
function failure(err) {
  const last = String((err && err.message) || err).trim().split("\n").pop();
  if (!err || !err.type) return [(err && err.name) || "Error", last];
  const cut = last.indexOf(": ");
  return [err.type, cut >= 0 ? last.slice(cut + 2) : last];
}

const handlers = {
  [msg.Request.LOAD]: (m) => load(m.id, m.model, m.ctx, m.device),
  [msg.Request.CHAT]: (m) => chat(m.id, m.request),
  [msg.Request.RESET]: () => session && session.reset(),
};

self.onmessage = (e) => {
  const m = e.data;
  if (m.type === msg.Request.STOP) { // at once: the running chat checks between two tokens
    if (session) session.stop();
    return;
  }
  busy = busy.then(async () => {
    try {
      if (!handlers[m.type]) throw new TypeError(`unknown request type ${m.type}`);
      await handlers[m.type](m);
    } catch (err) {
      post(msg.error(m.id, ...failure(err)));
    }
  });
};

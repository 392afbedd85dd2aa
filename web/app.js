// The chat page: talks to the worker (Pyodide + runtime_py) with the messages of messages.js.
// Model output is inserted as text (textContent), never as HTML.
import * as msg from "./messages.js";

const $ = (id) => document.getElementById(id);
const worker = new Worker("worker.js", { type: "module" });
const messages = [];
let current = null; // the chat being answered: {id, node, text, finish, usage}
let nextId = 1; // every request's id, so replies can be matched to it
let loading = null; // the id of the load running
const DEVICE_KEY = "lutlm-device"; // the device setting (a messages.js Device), kept for the next visit
// for tests: the worker, and the chat being answered
window.app = { worker, get current() { return current; } };

function add(role, text) {
  const node = document.createElement("div");
  node.className = `msg ${role}`;
  node.textContent = text;
  $("log").appendChild(node);
  $("log").scrollTop = $("log").scrollHeight;
  return node;
}

function setBusy(busy) {
  // Send stays enabled: a prompt sent while answering gets a message instead of being lost
  $("prompt").disabled = false;
  $("stop").disabled = !busy;
  $("reset").disabled = busy;
}

worker.onmessage = (e) => {
  const m = e.data;
  if (m.type === msg.Reply.PROGRESS) {
    $("progress").hidden = false;
    $("progress").max = m.total || 1;
    $("progress").value = m.done;
    $("status").textContent = m.stage === msg.Stage.DOWNLOAD
      ? `Downloading ${(m.done / 2 ** 20).toFixed(1)} of ${(m.total / 2 ** 20).toFixed(1)} MiB (${m.file})`
      : m.stage === msg.Stage.GPU ? "Loading the weights..." : "Starting Python...";
  } else if (m.type === msg.Reply.READY) {
    showCached();
    window.loadSeconds = (performance.now() - window.loadStarted) / 1000;
    window.loadInfo = m; // model, ctx, adapter, gpu_bytes: for tests and benchmarks
    $("progress").hidden = true;
    $("status").textContent = `Ready: ${m.model} on ${backendName(m.adapter)}, context ${m.ctx}`;
    $("load").disabled = false; // another model, or another device
    $("prompt").disabled = false;
    $("send").disabled = false;
    $("reset").disabled = false;
    document.body.dataset.state = "ready";
  } else if (m.type === msg.Reply.CHUNK && current && m.id === current.id) {
    const choice = m.chunk.choices[0];
    current.text += choice.delta.content || "";
    current.node.textContent = current.text;
    current.finish = choice.finish_reason || current.finish;
    current.usage = m.chunk.usage || current.usage;
  } else if (m.type === msg.Reply.DONE && current && m.id === current.id) {
    messages.push({ role: "assistant", content: current.text });
    const u = current.usage;
    window.lastUsage = u; // for tests and benchmarks
    window.wasmBytes = m.wasm_bytes; // Pyodide's heap: the worker's memory, which no JS heap figure counts
    if (u) {
      const stats = add("stats", `${u.completion_tokens} tokens, first after ${u.ttft_s.toFixed(2)} s` +
        (u.decode_tokens_per_s ? `, ${u.decode_tokens_per_s.toFixed(2)} tok/s` : "") + ` (${current.finish})`);
      stats.className = "stats";
    }
    current = null;
    setBusy(false);
    document.body.dataset.state = "idle";
  } else if (m.type === msg.Reply.LOST) {
    add("error", m.message);
    current = null;
    setBusy(false);
    $("prompt").disabled = true;
    $("send").disabled = true;
    $("load").disabled = false; // loading again re-initialises the device
    document.body.dataset.state = "lost";
  } else if (m.type === msg.Reply.NOTICE) {
    add("notice", m.message);
  } else if (m.type === msg.Reply.ERROR) {
    add("error", m.error.message);
    if (m.id === loading) { $("progress").hidden = true; $("load").disabled = false; } // the setting may help
    if (current && m.id === current.id) { current = null; setBusy(false); }
    document.body.dataset.state = "error";
  }
};

$("form").onsubmit = (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  if (current) { add("error", "Still answering: wait, or press Stop."); return; }
  $("prompt").value = "";
  messages.push({ role: "user", content: text });
  add("user", text);
  current = { id: nextId++, node: add("assistant", ""), text: "", finish: null, usage: null };
  setBusy(true);
  document.body.dataset.state = "generating";
  const params = document.body.dataset.params ? JSON.parse(document.body.dataset.params) : {
    temperature: Number($("temperature").value), top_p: Number($("top_p").value),
    max_tokens: Math.max(1, Math.floor(Number($("max_tokens").value))),
  };
  const system = $("system").value.trim();
  const convo = system ? [{ role: "system", content: system }, ...messages] : messages;
  worker.postMessage(msg.chat(current.id, { ...params, messages: convo }));
};
$("stop").onclick = () => worker.postMessage(msg.stop(nextId++));
$("reset").onclick = () => {
  if (current) return;
  messages.length = 0;
  $("log").textContent = "";
  worker.postMessage(msg.reset(nextId++)); // a new chat starts from an empty cache
};
$("load").onclick = () => {
  $("load").disabled = true;
  window.loadStarted = performance.now();
  loading = nextId++;
  worker.postMessage(msg.load(loading, $("model").value, null, $("device").value));
};
const savedDevice = localStorage.getItem(DEVICE_KEY);
if (Object.values(msg.Device).includes(savedDevice)) $("device").value = savedDevice;
$("device").onchange = () => localStorage.setItem(DEVICE_KEY, $("device").value);

// What runs the model, for the status line: the CPU kernels' build, or the GPU adapter.
function backendName(a) {
  if (a.backend !== "cpu") return `WebGPU · ${a.vendor} ${a.description}`.trim();
  return `CPU · WebAssembly SIMD (${a.simd}) · ${a.threads} thread${a.threads === 1 ? "" : "s"}`;
}

// Stored models: what the worker keeps in the Cache API, with sizes, a delete button, and the
// browser's storage estimate.
async function showCached() {
  const box = $("cached");
  box.textContent = "";
  const cache = await caches.open(msg.MODEL_CACHE);
  const sizes = new Map();
  for (const req of await cache.keys()) {
    const match = new URL(req.url).pathname.match(/models\/([^/]+)\//);
    if (!match) continue;
    const resp = await cache.match(req);
    const bytes = Number(resp.headers.get("content-length")) || (await resp.clone().arrayBuffer()).byteLength;
    sizes.set(match[1], (sizes.get(match[1]) || 0) + bytes);
  }
  if (!sizes.size) box.textContent = "No model stored in this browser yet.";
  for (const [name, bytes] of sizes) {
    const row = document.createElement("div");
    row.className = "cached-model";
    row.textContent = `${name}: ${(bytes / 2 ** 20).toFixed(1)} MiB stored `;
    const del = document.createElement("button");
    del.type = "button";
    del.textContent = "Delete";
    del.onclick = async () => {
      for (const req of await cache.keys()) if (req.url.includes(`/models/${name}/`)) await cache.delete(req);
      showCached();
    };
    row.appendChild(del);
    box.appendChild(row);
  }
  if (navigator.storage && navigator.storage.estimate) {
    const { usage, quota } = await navigator.storage.estimate();
    $("storage").textContent = `This site uses ${(usage / 2 ** 20).toFixed(0)} MiB of ${(quota / 2 ** 20).toFixed(0)} MiB available.`;
  }
}
showCached().catch(() => {});

if ("serviceWorker" in navigator) {
  // the app shell, Pyodide and runtime_py come from the service worker's cache when offline
  navigator.serviceWorker.register("sw.js").catch((err) => add("notice", `Offline use unavailable: ${err.message}`));
}

fetch("models.json").then((r) => r.json()).then((list) => {
  for (const m of list) {
    const opt = document.createElement("option");
    opt.value = m.name;
    opt.textContent = `${m.name} (${(m.bytes / 2 ** 20).toFixed(0)} MiB)`;
    $("model").appendChild(opt);
  }
}).catch(() => { $("status").textContent = "No models are served with this page (models.json missing)."; });

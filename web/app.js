// The chat page: talks to the worker (Pyodide + runtime_py) with messages. Model output is
// inserted as text (textContent), never as HTML.
"use strict";
const $ = (id) => document.getElementById(id);
const worker = new Worker("worker.js", { type: "module" });
const messages = [];
let current = null; // {id, node, text}
let nextId = 1;

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
  if (m.type === "progress") {
    $("progress").hidden = false;
    $("progress").max = m.total || 1;
    $("progress").value = m.done;
    $("status").textContent = m.stage === "download"
      ? `Downloading ${(m.done / 2 ** 20).toFixed(1)} of ${(m.total / 2 ** 20).toFixed(1)} MiB (${m.file})`
      : m.stage === "gpu" ? "Preparing the GPU..." : "Starting Python...";
  } else if (m.type === "ready") {
    window.loadSeconds = (performance.now() - window.loadStarted) / 1000;
    $("progress").hidden = true;
    $("status").textContent = `Ready: ${m.model} on ${m.adapter.vendor} ${m.adapter.description}, context ${m.ctx}`;
    $("prompt").disabled = false;
    $("send").disabled = false;
    $("reset").disabled = false;
    document.body.dataset.state = "ready";
  } else if (m.type === "chunk" && current && m.id === current.id) {
    current.text += m.text;
    current.node.textContent = current.text;
  } else if (m.type === "done" && current && m.id === current.id) {
    messages.push({ role: "assistant", content: current.text });
    const u = JSON.parse(m.usage || "null");
    window.lastUsage = u; // for tests and benchmarks
    if (u) {
      const stats = add("stats", `${u.completion_tokens} tokens, first after ${u.ttft_s.toFixed(2)} s` +
        (u.decode_tokens_per_s ? `, ${u.decode_tokens_per_s.toFixed(2)} tok/s` : "") + ` (${m.finish})`);
      stats.className = "stats";
    }
    current = null;
    setBusy(false);
    document.body.dataset.state = "idle";
  } else if (m.type === "notice") {
    add("notice", m.message);
  } else if (m.type === "error") {
    add("error", m.message);
    if (current && (m.id === undefined || m.id === current.id)) { current = null; setBusy(false); }
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
  current = { id: nextId++, node: add("assistant", ""), text: "" };
  setBusy(true);
  document.body.dataset.state = "generating";
  const params = JSON.parse(document.body.dataset.params || '{"temperature": 0, "max_tokens": 256}');
  worker.postMessage({ type: "chat", id: current.id, messages, params });
};
$("stop").onclick = () => worker.postMessage({ type: "stop" });
$("reset").onclick = () => {
  if (current) return;
  messages.length = 0;
  $("log").textContent = "";
  worker.postMessage({ type: "reset" }); // a new chat starts from an empty cache
};
$("load").onclick = () => {
  $("load").disabled = true;
  window.loadStarted = performance.now();
  worker.postMessage({ type: "load", model: $("model").value });
};

if ("serviceWorker" in navigator) {
  // the app shell, Pyodide and runtime_py come from the service worker's cache when offline
  navigator.serviceWorker.register("sw.js").catch((err) => add("notice", `Offline use unavailable: ${err.message}`));
}
if (!navigator.gpu) {
  $("status").textContent = "This browser exposes no WebGPU. Use a recent Chromium; on Linux start it with " +
    "--enable-unsafe-webgpu (and, without a GPU, it falls back to SwiftShader).";
  $("load").disabled = true;
  document.body.dataset.state = "no-webgpu";
}

fetch("models.json").then((r) => r.json()).then((list) => {
  for (const m of list) {
    const opt = document.createElement("option");
    opt.value = m.name;
    opt.textContent = `${m.name} (${(m.bytes / 2 ** 20).toFixed(0)} MiB)`;
    $("model").appendChild(opt);
  }
}).catch(() => { $("status").textContent = "No models are served with this page (models.json missing)."; });

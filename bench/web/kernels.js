// The browser executor of bench/kernels.py's workload: the same buffers (by fill rule), the same
// TVM-emitted WGSL, the same dispatches; timing by command buffers of repeated cases closed by
// onSubmittedWorkDone. Returns {adapter, samples: [[ms per rep] per case]} or {error}.
"use strict";

function fill(kind, words, seed) {
  const out = new Uint32Array(words);
  if (kind === "zero") return out;
  if (kind === "f16pair") { out.fill(0xAA66211F); return out; } // f16 0.01 (low), -0.05 (high)
  if (kind === "iota") { out.forEach((_, i) => { out[i] = i; }); return out; } // token ids 0, 1, 2, ...
  let s = seed >>> 0 || 1;
  const f = new Float32Array(out.buffer);
  for (let i = 0; i < words; i++) {
    s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0;
    if (kind === "f32") f[i] = s / 4294967296 * 2 - 1; else out[i] = s;
  }
  return out;
}

function packUniforms(values) {
  const buf = new ArrayBuffer(Math.max(16, Math.ceil(values.length * 4 / 16) * 16));
  const view = new DataView(buf);
  values.forEach(([kind, v], i) => {
    if (kind === "f32") view.setFloat32(4 * i, v, true);
    else if (kind === "i32") view.setInt32(4 * i, v, true);
    else view.setUint32(4 * i, v, true);
  });
  return buf;
}

// The workload's buffers filled, its kernels compiled and each case's calls bound. `without`:
// adapter features to leave unused (a kernel needing one runs as its fallback), for A/B runs.
async function prepare(without) {
  const wl = await (await fetch("workload.json")).json();
  if (!navigator.gpu) throw new Error("no WebGPU (navigator.gpu missing)");
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) throw new Error("no WebGPU adapter");
  const has = (f) => adapter.features.has(f) && !without.includes(f);
  const device = await adapter.requestDevice({
    requiredFeatures: ["shader-f16", "subgroups"].filter(has),
    requiredLimits: {
      maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize,
      maxBufferSize: adapter.limits.maxBufferSize,
    },
  });
  const errors = [];
  device.addEventListener("uncapturederror", (e) => errors.push(e.error.message));
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;
  const bufs = {};
  let seed = 1;
  for (const [name, b] of Object.entries(wl.buffers)) {
    const words = Math.ceil(b.bytes / 4);
    bufs[name] = device.createBuffer({ size: 4 * words, usage });
    device.queue.writeBuffer(bufs[name], 0, fill(b.fill, words, seed++ * 2654435761));
  }
  const supported = (c) => c.features.every(has);
  const index = Object.fromEntries(wl.kernels.map((k, i) => [k.name, i]));
  // a kernel needing a feature the adapter lacks runs as its fallback (runtime_py.gpu.usable)
  const usable = (i) => (wl.kernels[i].features.every(has) || !wl.kernels[i].fallback) ? i : index[wl.kernels[i].fallback];
  const pipes = wl.kernels.map((k, i) => (!k.features.every(has) || usable(i) !== i) ? null : device.createComputePipeline({
    layout: "auto", compute: { module: device.createShaderModule({ code: k.wgsl }), entryPoint: k.entry },
  }));
  const cases = wl.cases.map((c) => !supported(c) ? [] : c.calls.map((call) => {
    const uniform = device.createBuffer({ size: packUniforms(call.uniforms).byteLength,
                                          usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(uniform, 0, packUniforms(call.uniforms));
    const entries = call.buffers.map((name, i) => ({ binding: i, resource: { buffer: bufs[name] } }));
    entries.push({ binding: call.buffers.length, resource: { buffer: uniform } });
    const pipe = pipes[usable(call.kernel)];
    return { pipe, group: device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries }), grid: call.grid };
  }));
  async function once(calls, reps) {
    const t0 = performance.now();
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    for (let r = 0; r < reps; r++) {
      for (const c of calls) {
        pass.setPipeline(c.pipe);
        pass.setBindGroup(0, c.group);
        pass.dispatchWorkgroups(c.grid[0], c.grid[1], c.grid[2]);
      }
    }
    pass.end();
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
    return (performance.now() - t0) / reps;
  }
  return { adapter, device, bufs, cases, errors, once };
}

window.runKernelBench = async function (rounds, targetMs, without = []) {
  try {
    const { adapter, cases, errors, once } = await prepare(without);
    const reps = [];
    for (const calls of cases) reps.push(calls.length ? Math.max(1, Math.floor(targetMs / Math.max(await once(calls, 1), 0.05))) : 0);
    const samples = cases.map(() => []);
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < cases.length; i++) if (cases[i].length) samples[i].push(await once(cases[i], reps[i]));
    }
    if (errors.length) return { error: errors.join("; ") };
    const info = adapter.info || {};
    const adapterName = [info.vendor, info.architecture, info.device].filter(Boolean).join(" ") || "unknown";
    return { adapter: adapterName + (adapter.isFallbackAdapter ? " (fallback)" : ""), samples };
  } catch (e) {
    return { error: String(e && e.stack || e) };
  }
};

// Case `index` run once on the filled buffers, so that a kernel and its fallback can be compared
// on the same inputs; returns {outputs: {name: [f32 ...]} for `names`, features of the device} or {error}.
window.runKernelOutputs = async function (index, names, without = []) {
  try {
    const { device, bufs, cases, errors, once } = await prepare(without);
    if (!cases[index].length) return { error: `case ${index} needs a feature this adapter lacks` };
    await once(cases[index], 1);
    const outputs = {};
    for (const name of names) {
      const staging = device.createBuffer({ size: bufs[name].size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      const enc = device.createCommandEncoder();
      enc.copyBufferToBuffer(bufs[name], 0, staging, 0, bufs[name].size);
      device.queue.submit([enc.finish()]);
      await staging.mapAsync(GPUMapMode.READ);
      outputs[name] = Array.from(new Float32Array(staging.getMappedRange().slice(0)));
      staging.unmap();
    }
    if (errors.length) return { error: errors.join("; ") };
    return { outputs, features: [...device.features] };
  } catch (e) {
    return { error: String(e && e.stack || e) };
  }
};

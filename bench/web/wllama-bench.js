// Runs the benchmark workload on wllama: load the GGUF served at ./model.gguf with n_threads
// threads on the CPU (n_gpu_layers 0: its WebGPU path does not engage on SwiftShader), twice
// (cold, then from wllama's own cache), then greedy chat completions with cache_prompt off (each
// repetition prefills the whole prompt), streamed, timing the first piece and the rest.
import { Wllama } from "./wllama/esm/index.js";

// bytes Chromium attributes to the page (JS heaps); needs cross-origin isolation
const memory = async () => (self.crossOriginIsolated && performance.measureUserAgentSpecificMemory
  ? (await performance.measureUserAgentSpecificMemory()).bytes : null);

const quiet = { debug() {}, log() {}, warn() {}, error: console.error };

window.runWllama = async (threads, prompts, maxTokens, reps) => {
  try {
    // cold: downloaded into wllama's cache; warm: a second instance loads it from that cache
    const loads = [];
    let wllama = null;
    for (let pass = 0; pass < 2; pass++) {
      if (wllama) await wllama.exit();
      wllama = new Wllama({ default: "./wllama/esm/wasm/wllama.wasm" }, { logger: quiet });
      const t0 = performance.now();
      await wllama.loadModelFromUrl(new URL("model.gguf", location.href).href,
        { n_threads: threads, n_ctx: 2048, n_gpu_layers: 0, useCache: true });
      loads.push((performance.now() - t0) / 1000);
    }
    const results = [];
    for (const messages of prompts) {
      const samples = [];
      for (let r = 0; r < reps; r++) {
        const t = performance.now();
        let first = null;
        let pieces = 0;
        const stream = await wllama.createChatCompletion({ messages, max_tokens: maxTokens, temperature: 0,
                                                           stream: true, ignore_eos: true, cache_prompt: false });
        for await (const chunk of stream) {
          const text = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
          if (text) { if (first === null) first = performance.now(); pieces++; }
        }
        const end = performance.now();
        samples.push({ ttft_s: (first - t) / 1000, decode_tps: (pieces - 1) / ((end - first) / 1000), new_tokens: pieces });
      }
      results.push(samples);
    }
    const memory_bytes = await memory(); // before the engine lets go of its memory
    await wllama.exit();
    return { memory_bytes, load_s: loads[0], warm_load_s: loads[1], threads, isolated: self.crossOriginIsolated, results };
  } catch (e) {
    return { error: String((e && e.stack) || e) };
  }
};

// Runs the benchmark workload on wllama: load the GGUF served at ./model.gguf with n_threads
// threads on the CPU (n_gpu_layers 0: its WebGPU path does not engage on SwiftShader), then
// greedy chat completions, streamed, timing the first piece and the rest.
import { Wllama } from "./wllama/esm/index.js";

const quiet = { debug() {}, log() {}, warn() {}, error: console.error };

window.runWllama = async (threads, prompts, maxTokens, reps) => {
  try {
    const wllama = new Wllama({ default: "./wllama/esm/wasm/wllama.wasm" }, { logger: quiet });
    const t0 = performance.now();
    await wllama.loadModelFromUrl(new URL("model.gguf", location.href).href,
      { n_threads: threads, n_ctx: 2048, n_gpu_layers: 0, useCache: false });
    const load_s = (performance.now() - t0) / 1000;
    const results = [];
    for (const messages of prompts) {
      const samples = [];
      for (let r = 0; r < reps; r++) {
        const t = performance.now();
        let first = null;
        let pieces = 0;
        const stream = await wllama.createChatCompletion({ messages, max_tokens: maxTokens, temperature: 0,
                                                           stream: true, ignore_eos: true });
        for await (const chunk of stream) {
          const text = chunk.choices && chunk.choices[0] && chunk.choices[0].delta && chunk.choices[0].delta.content;
          if (text) { if (first === null) first = performance.now(); pieces++; }
        }
        const end = performance.now();
        samples.push({ ttft_s: (first - t) / 1000, decode_tps: (pieces - 1) / ((end - first) / 1000), new_tokens: pieces });
      }
      results.push(samples);
    }
    await wllama.exit();
    return { load_s, threads, isolated: self.crossOriginIsolated, results };
  } catch (e) {
    return { error: String((e && e.stack) || e) };
  }
};

// Runs the benchmark workload on transformers.js: the ONNX folder served at ./model/ (made by
// `lutlm export onnx`), onnxruntime-web's wasm served at ./ort/, nothing fetched from elsewhere.
// Greedy, end-of-sequence suppressed until maxTokens (min_new_tokens), each generation cut after
// budgetS seconds of decoding (software WebGPU takes seconds per token); the sample says how many
// tokens it timed.
import { env, AutoModelForCausalLM, AutoTokenizer, InterruptableStoppingCriteria } from "./transformers/transformers.js";

// bytes Chromium attributes to the page (JS heaps); needs cross-origin isolation
const memory = async () => (self.crossOriginIsolated && performance.measureUserAgentSpecificMemory
  ? (await performance.measureUserAgentSpecificMemory()).bytes : null);

env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = "/"; // a path, not a URL: transformers.js only reads local models by path
const ort = env.backends.onnx;
ort.wasm.wasmPaths = {
  mjs: new URL("ort/ort-wasm-simd-threaded.asyncify.mjs", location.href).href,
  wasm: new URL("ort/ort-wasm-simd-threaded.asyncify.wasm", location.href).href,
};

async function load(device, dtype) {
  const t0 = performance.now();
  const tokenizer = await AutoTokenizer.from_pretrained("model");
  const model = await AutoModelForCausalLM.from_pretrained("model", { device, dtype });
  return { tokenizer, model, seconds: (performance.now() - t0) / 1000 };
}

async function generate(model, inputs, maxTokens, budgetS) {
  const stop = new InterruptableStoppingCriteria();
  const t = performance.now();
  let calls = 0, first = null, last = null, count = 0;
  const streamer = {
    put() {
      if (calls++ === 0) return; // the first call carries the prompt
      last = performance.now();
      if (first === null) first = last;
      count++;
      if ((last - first) / 1000 > budgetS) stop.interrupt();
    },
    end() {},
  };
  await model.generate({ ...inputs, max_new_tokens: maxTokens, min_new_tokens: maxTokens, do_sample: false,
                         streamer, stopping_criteria: [stop] });
  return { ttft_s: (first - t) / 1000, decode_tps: count > 1 ? (count - 1) / ((last - first) / 1000) : null,
           new_tokens: count };
}

window.runTjs = async (device, dtype, threads, prompts, maxTokens, reps, budgetS) => {
  try {
    ort.wasm.numThreads = threads;
    const cold = await load(device, dtype);
    await cold.model.dispose();
    const { tokenizer, model, seconds } = await load(device, dtype);
    const results = [];
    for (const messages of prompts) {
      const inputs = tokenizer.apply_chat_template(messages, { add_generation_prompt: true, return_dict: true });
      const samples = [];
      for (let r = 0; r < reps; r++) samples.push(await generate(model, inputs, maxTokens, budgetS));
      results.push(samples);
    }
    const memory_bytes = await memory(); // before the engine lets go of its memory
    await model.dispose();
    return { memory_bytes, load_s: cold.seconds, warm_load_s: seconds, isolated: self.crossOriginIsolated, results };
  } catch (e) {
    return { error: String((e && e.stack) || e) };
  }
};

// The messages between the chat page (app.js) and the Web Worker that hosts Pyodide and runtime_py
// (worker.js): every type in both directions, the fields of each, and a constructor for each one
// either side sends, so neither spells a type or a field list of its own.
//
// Requests go from the page to the worker and carry an `id` the page chooses; every reply to a
// request carries that id, so a caller can match replies to its requests (an OpenAI-style API
// over this protocol resolves a request's promise on its last reply: ready, done or error). The
// worker runs requests one at a time in the order they came; only stop acts at once.

/** The Cache API store where the worker keeps model files, verified by sha256; the page lists it. */
export const MODEL_CACHE = "lutlm-models-v1";

/** The types of requests, page -> worker. */
export const Request = Object.freeze({
  LOAD: "load",
  CHAT: "chat",
  STOP: "stop",
  RESET: "reset",
});

/** The types of replies and events, worker -> page. */
export const Reply = Object.freeze({
  PROGRESS: "progress",
  NOTICE: "notice",
  READY: "ready",
  CHUNK: "chunk",
  DONE: "done",
  ERROR: "error",
  LOST: "lost",
});

/** Where a load runs the model: the page's setting, resolved by the worker (web/README.md). */
export const Device = Object.freeze({
  AUTO: "auto", // WebGPU on a hardware adapter; the CPU without WebGPU or on a software adapter
  WEBGPU: "webgpu", // the GPU through WebGPU, whatever the adapter
  CPU: "cpu", // the CPU kernels: WebAssembly SIMD
});

/** The stages of a load, as progress replies name them. */
export const Stage = Object.freeze({
  PYTHON: "python", // starting Pyodide and runtime_py
  DOWNLOAD: "download", // fetching the shards (or reading them from MODEL_CACHE)
  GPU: "gpu", // runtime_py filling the backend's buffers (the GPU's, or the CPU kernels' memory)
});

// ---- requests ----

/**
 * Load a model served with the page, in place of any loaded before. Replies: progress and notice
 * while it loads, then ready, or error.
 * @typedef {object} LoadRequest
 * @property {"load"} type
 * @property {number} id - chosen by the page; every reply repeats it
 * @property {string} model - the package's name in models.json (its files are under models/NAME/)
 * @property {number|null} ctx - the context to allocate, in tokens; null for the package's default
 * @property {"auto"|"webgpu"|"cpu"} device - one of Device
 */
/** @returns {LoadRequest} */
export const load = (id, model, ctx = null, device = Device.AUTO) => ({ type: Request.LOAD, id, model, ctx, device });

/**
 * Answer a conversation with the loaded model. Replies: a chunk per piece of text, then done, or
 * error (a bad parameter, no model loaded).
 * @typedef {object} ChatRequest
 * @property {"chat"} type
 * @property {number} id - chosen by the page; every reply repeats it
 * @property {ChatCompletionRequest} request - OpenAI's request body (runtime_py.api's parameters)
 */
/**
 * @typedef {object} ChatCompletionRequest
 * @property {{role: string, content: string}[]} messages - the conversation so far, oldest first
 * @property {number} [max_tokens] - at most this many tokens in the answer
 * @property {number} [temperature] - 0 for greedy decoding
 * @property {number} [top_p] - nucleus sampling's probability mass
 * @property {number} [seed] - the sampler's seed, for a repeatable answer
 * @property {string|string[]} [stop] - text that ends the answer (not included in it)
 * @property {boolean} [ignore_eos] - decode max_tokens whatever the model says (benchmarks)
 */
/** @returns {ChatRequest} */
export const chat = (id, request) => ({ type: Request.CHAT, id, request });

/**
 * Stop the chat that is running, before its next token: that chat ends with done, its last chunk's
 * finish_reason "abort". No reply of its own.
 * @typedef {object} StopRequest
 * @property {"stop"} type
 * @property {number} id - chosen by the page
 */
/** @returns {StopRequest} */
export const stop = (id) => ({ type: Request.STOP, id });

/**
 * Start a new conversation: the next chat prefills from an empty cache. No reply unless it fails.
 * @typedef {object} ResetRequest
 * @property {"reset"} type
 * @property {number} id - chosen by the page; an error reply repeats it
 */
/** @returns {ResetRequest} */
export const reset = (id) => ({ type: Request.RESET, id });

// ---- replies ----

/**
 * How far a load has come.
 * @typedef {object} ProgressReply
 * @property {"progress"} type
 * @property {number} id - the load's
 * @property {"python"|"download"|"gpu"} stage - one of Stage
 * @property {number} done - bytes of the shards fetched so far (0 while Python starts)
 * @property {number} total - the shards' bytes in all (1 while Python starts)
 * @property {string} [file] - the shard being fetched (download stage)
 */
/** @returns {ProgressReply} */
export const progress = (id, stage, done, total, file) => ({ type: Reply.PROGRESS, id, stage, done, total, file });

/**
 * Something the user should know that stops nothing (a damaged cached file fetched again, storage full).
 * @typedef {object} NoticeReply
 * @property {"notice"} type
 * @property {number} id - the request during which it happened
 * @property {string} message - one sentence for the user
 */
/** @returns {NoticeReply} */
export const notice = (id, message) => ({ type: Reply.NOTICE, id, message });

/**
 * The model is loaded and takes chats (the last reply to a load that worked).
 * @typedef {object} ReadyReply
 * @property {"ready"} type
 * @property {number} id - the load's
 * @property {string} model - the package's name
 * @property {number} ctx - the context allocated, in tokens
 * @property {GpuAdapter|CpuAdapter} adapter - what runs the model (its `backend` says which)
 * @property {number} gpu_bytes - bytes the runtime allocated: GPU buffers, or the CPU kernels' memory
 */
/**
 * @typedef {object} GpuAdapter
 * @property {"webgpu"} backend
 * @property {string} vendor
 * @property {string} device
 * @property {string} description - the adapter's architecture
 */
/**
 * @typedef {object} CpuAdapter
 * @property {"cpu"} backend
 * @property {"relaxed"|"simd128"} simd - the build the browser runs: relaxed SIMD, or plain SIMD128
 * @property {number} threads - compute threads
 * @property {string} description - the two in words
 */
/** @param {number} id @param {object} info - runtime_py.browser.Session.load's fields @returns {ReadyReply} */
export const ready = (id, info) => ({ type: Reply.READY, id, ...info });

/**
 * A piece of the answer, as the runtime streams it (runtime_py.api).
 * @typedef {object} ChunkReply
 * @property {"chunk"} type
 * @property {number} id - the chat's
 * @property {ChatCompletionChunk} chunk - OpenAI's streamed chunk
 */
/**
 * @typedef {object} ChatCompletionChunk
 * @property {string} id - "chatcmpl-...", the same for every chunk of an answer
 * @property {"chat.completion.chunk"} object
 * @property {number} created - Unix time, in seconds
 * @property {string} model - the package's name
 * @property {{index: number, delta: {content?: string}, finish_reason: null|"stop"|"length"|"abort"}[]} choices
 *   - one choice: its new text, and on the last chunk why the answer ended
 * @property {Usage} [usage] - on the last chunk only
 */
/**
 * @typedef {object} Usage
 * @property {number} prompt_tokens - tokens of the templated conversation
 * @property {number} completion_tokens - tokens generated
 * @property {number} total_tokens - the two together
 * @property {number} reused_tokens - prompt tokens whose keys and values were already cached
 * @property {number} ttft_s - seconds to the first generated token
 * @property {number|null} decode_tokens_per_s - tokens a second after the first (null for one token)
 */
/** @returns {ChunkReply} */
export const chunk = (id, piece) => ({ type: Reply.CHUNK, id, chunk: piece });

/**
 * The chat is over: nothing more comes for its id (its last chunk said why and how much).
 * @typedef {object} DoneReply
 * @property {"done"} type
 * @property {number} id - the chat's
 * @property {number} wasm_bytes - the size of Pyodide's heap, the worker's memory no JS heap figure counts
 */
/** @returns {DoneReply} */
export const done = (id, wasm_bytes) => ({ type: Reply.DONE, id, wasm_bytes });

/**
 * The request failed; nothing more comes for its id.
 * @typedef {object} ErrorReply
 * @property {"error"} type
 * @property {number} id - the failed request's
 * @property {{code: string, message: string}} error - code: the error's class (a runtime_py error's
 *   such as PackageError, GenerationError or GPUError, else a JavaScript error's name); message:
 *   one line for the user
 */
/** @returns {ErrorReply} */
export const error = (id, code, message) => ({ type: Reply.ERROR, id, error: { code, message } });

/**
 * The GPU device was lost (the browser reset the GPU): every buffer is gone, chats fail until a new
 * load. An event of no request, so it has no id; runtime_py/gpu_js.py posts it from Python.
 * @typedef {object} LostEvent
 * @property {"lost"} type
 * @property {string} message - what happened, and that loading again continues
 */

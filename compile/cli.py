"""The `lutlm` command line.

Contract scripts rely on: `fetch` prints the fetched file's path as its last line; `eval ppl`
prints `ppl <value>` as its last line; `generate` writes only the generated text (or ids) to
stdout. Bad input ends with a one-line `lutlm: error: ...` on stderr and exit status 2, never a
traceback (set LUTLM_DEBUG=1 to see one).

This module only turns arguments into the library's types, calls it (lutlm.build for the compile
pipeline, lutlm.generation for text) and prints; the benchmark harness (lutlm_bench) is imported
by the `bench` commands alone, when they run.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from . import build
from .assets import ASSETS, DEFAULT_MODEL, fetch
from .errors import LutlmError

if TYPE_CHECKING:
    from runtime_py.engine import Sampling

    from .quant.pipeline import Request

EXIT_ERROR = 2
SOURCE_HELP = f"GGUF file, Hugging Face folder, quantised checkpoint folder, or {DEFAULT_MODEL}"


def cmd_fetch(args: argparse.Namespace) -> None:
    names = list(ASSETS) if args.names == ["all"] else args.names
    for name in names:
        print(fetch(name))


def cmd_tokenize(args: argparse.Namespace) -> None:
    from .files import read_text
    from .perplexity import TEXT_BYTES

    tok = build.tokenizer(build.load(args.source, tensors=False))
    text = read_text(Path(args.file), TEXT_BYTES)
    print(" ".join(map(str, tok.encode(text, special=args.special))))


def cmd_eval_ppl(args: argparse.Namespace) -> None:
    from .perplexity import load_text, perplexity, windows
    from .reference import Reference

    text = load_text(args.text)
    progress = build.on_stderr()
    on_gpu = build.is_package(args.source)
    if on_gpu:
        llm = build.open_package(Path(args.source), args.window, progress, args.device)
        tokens = llm.tokenizer.encode(text)
    else:
        ckpt = build.load(args.source, progress=progress)
        tokens = build.tokenizer(ckpt).encode(text)
    chunks = windows(tokens, args.window, args.windows)
    print(f"text {args.text}: {len(tokens)} tokens; {len(chunks)} windows of {args.window} consecutive tokens "
          f"from token 0, no BOS, each from an empty cache, tokens 2..{args.window} of each scored "
          f"({len(chunks) * (args.window - 1)} in all)")
    with progress.stage("perplexity") as report:
        result = perplexity(_gpu_nll(llm.engine) if on_gpu else Reference(ckpt), chunks,
                            lambda i, running: report(f"window {i + 1}/{len(chunks)}, ppl {running:.3f}"))
    print(f"ppl {result.ppl:.4f}")


def _gpu_nll(engine):
    """The runtime engine as perplexity()'s scorer (NLL of each next token, computed on the GPU)."""
    import asyncio

    return lambda window: asyncio.run(engine.score(window))


def _sampling(args: argparse.Namespace) -> Sampling:
    from runtime_py.engine import Sampling

    return Sampling(args.temperature or 0.0, args.top_k, args.top_p, args.seed, args.repetition_penalty)


def cmd_generate(args: argparse.Namespace) -> None:
    """Only the generated text (or ids) on stdout, as it comes; the statistics on stderr."""
    from .generation import generate

    gen = generate(args.source, args.prompt, _sampling(args), args.max_tokens, args.chat, args.system, args.ctx,
                   build.on_stderr(), args.device)
    t0 = time.perf_counter()
    for piece in gen.pieces(args.ids):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(f"[{len(gen.prompt)} prompt tokens, {gen.count} generated in {time.perf_counter() - t0:.1f} s]",
          file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> None:
    """Interactive chat in the terminal: streaming replies, /reset, /exit, tokens/s after each."""
    import asyncio

    package = build.package(args.package)
    _sampling(args).validate()  # at once, not after the first message
    llm = build.open_package(package, args.ctx, build.on_stderr(), args.device)
    messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    print("chat with " + llm.model + " - /reset starts over, /exit (or Ctrl-D) leaves", file=sys.stderr)

    async def reply() -> str:
        text = []
        stream = await llm.chat.completions.create(messages=messages, stream=True, max_tokens=args.max_tokens,
                                                   temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                                   seed=args.seed, repetition_penalty=args.repetition_penalty)
        async for chunk in stream:
            piece = chunk["choices"][0]["delta"].get("content", "")
            text.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
            if "usage" in chunk:
                u = chunk["usage"]
                tps = f", {u['decode_tokens_per_s']} tok/s" if u["decode_tokens_per_s"] else ""
                print(f"\n[{u['prompt_tokens']} prompt tokens ({u['reused_tokens']} cached), {u['completion_tokens']} "
                      f"generated; first token {u['ttft_s']:.2f} s{tps}]", file=sys.stderr)
        return "".join(text)

    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            messages = messages[:1] if args.system else []
            llm.reset()
            print("[conversation reset]", file=sys.stderr)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        try:
            answer = asyncio.run(reply())
        except KeyboardInterrupt:
            llm.interrupt()
            print("\n[interrupted]", file=sys.stderr)
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": answer})


def _request(args: argparse.Namespace) -> Request:
    """The quantisation options as the library's Request, checked (with what only the command line
    can get wrong: options that apply only with others)."""
    from .quant.gptq import GPTQOptions
    from .quant.pipeline import Request
    from .quant.tune import TuneOptions

    if not args.tune and (args.tune_lr is not None or args.no_tune_norms):
        raise LutlmError("--tune-lr and --no-tune-norms apply with --tune EPOCHS only")
    tune = None
    if args.tune:
        lr = TuneOptions.lr if args.tune_lr is None else args.tune_lr
        tune = TuneOptions(args.tune, lr, norms=not args.no_tune_norms)
    req = Request(bits=args.bits, group=args.group, scale_bits=args.scale_bits, method=args.method, budget=args.budget,
                  embed_bits=args.embed_bits, calib_windows=args.calib_windows, window=args.window,
                  gptq=GPTQOptions(damp=args.damp, act_order=not args.no_act_order), tune=tune,
                  **({} if args.calib is None else {"calib_texts": args.calib.split(",")}))
    req.validate()
    if args.calib is not None and not req.needs_calibration:
        raise LutlmError("--calib applies with --method gptq, --bits mixed or --tune only")
    return req


def cmd_compile(args: argparse.Namespace) -> None:
    out = Path(args.output)
    manifest = build.compile_package(out, args.source, _request(args), args.decode, build.on_stderr())
    size = sum(s["bytes"] for s in manifest["shards"])
    print(f"{len(manifest['kernels'])} kernels, {len(manifest['shards'])} shards ({size / 2**20:.1f} MiB), "
          f"decode plan of {len(manifest['plans']['decode'])} dispatches", file=sys.stderr)
    print(out)


def cmd_export_onnx(args: argparse.Namespace) -> None:
    print(build.export_onnx(Path(args.output), args.source, _request(args), args.dtype, build.on_stderr()))


def cmd_quantize(args: argparse.Namespace) -> None:
    from .quant.pipeline import summary

    out = Path(args.output)
    info = build.quantize_to(out, args.source, _request(args), build.on_stderr())
    print(summary(info))
    print(out)


def _where(args: argparse.Namespace, places: tuple[str, ...] = ("native", "browser")) -> list[str]:
    where = [w.strip() for w in args.where.split(",") if w.strip()]
    if not where or set(where) - set(places):
        raise LutlmError(f"--where takes {', '.join(places)} (comma-separated), not {args.where!r}")
    return where


def cmd_bench_kernels(args: argparse.Namespace) -> None:
    from lutlm_bench import kernels

    where = _where(args, ("native", "browser", "wasm"))
    if args.rounds < 1:
        raise LutlmError("--rounds must be at least 1")
    kernels.main(where, args.rounds, args.json, args.quick)


def cmd_bench_step(args: argparse.Namespace) -> None:
    from lutlm_bench import step

    pkg = build.package(args.package)
    where = _where(args, ("native", "browser", "cpu"))
    if args.rounds < 1 or args.pos < 0 or args.prefill < 0:
        raise LutlmError("--rounds must be at least 1, --pos and --prefill at least 0")
    without = [f for f in args.without.split(",") if f]
    if set(without) - {"subgroups", "shader-f16"}:
        raise LutlmError(f"--without {args.without}: the features are subgroups and shader-f16")
    step.main(pkg, where, args.pos, args.rounds, args.json, args.ctx, args.prefill, without)


def _quant_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--bits", required=required, default=None if required else "4",
                   help="4, 3, 2, t (ternary) or mixed" + ("" if required else " (default 4)"))
    p.add_argument("--budget", type=float, help="bits per weight of the linear layers, scales included (mixed)")
    p.add_argument("--group", type=int, default=32, help="weights per scale/minimum group (default 32)")
    p.add_argument("--scale-bits", type=int, default=16,
                   help="16: f16 scale and minimum per group (default); 8: 8-bit codes times an f16 step per row "
                        "(with --bits mixed: the formats it chooses among)")
    p.add_argument("--method", default="gptq", help="rtn or gptq (default gptq)")
    p.add_argument("--embed-bits", type=int, default=8, help="bits of the (tied) embedding / output head: 8 or 4")
    p.add_argument("--calib", help="calibration texts, comma-separated (never the eval text; default c4,code)")
    p.add_argument("--calib-windows", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--window", type=_at_least(2), default=512, help="tokens per calibration window")
    p.add_argument("--damp", type=float, default=0.01, help="GPTQ damping, fraction of mean Hessian diagonal")
    p.add_argument("--no-act-order", action="store_true", help="GPTQ in column order instead of act-order")
    p.add_argument("--tune", type=int, default=0, metavar="EPOCHS",
                   help="then train scales, minimums and norm gains end to end against the source model "
                        "(default 0: off)")
    p.add_argument("--tune-lr", type=float, help="tuning's first Adam step, relative to each tensor's scales "
                                                 "or norm gains (default 6e-4); it decays to 0 along a cosine")
    p.add_argument("--no-tune-norms", action="store_true", help="tuning leaves the RMSNorm gains as they are")
    p.add_argument("-o", "--output", required=True, help="output folder")


def _workload_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default="40,400", help="chat prompt sizes in tokens, comma-separated (default 40,400)")
    p.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per answer, end-of-sequence ignored (default 64)")
    p.add_argument("--reps", type=int, default=3, help="repetitions; rows give median, min and max (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the rows (with every sample) as JSON")


def _sampling_options(p: argparse.ArgumentParser, temperature: float | None) -> None:
    p.add_argument("--temperature", type=float, default=temperature,
                   help="0 or unset: greedy" if temperature is None else f"default {temperature}; 0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=_at_least(0), default=0, help="0: off")
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)


def cmd_serve(args: argparse.Namespace) -> None:
    from . import webapp

    packages = [Path(p) for p in args.packages] or sorted(p.parent for p in Path("build").glob("*/manifest.json"))
    for pkg in packages:
        build.package(pkg)
    if not 0 <= args.port <= 65535:
        raise LutlmError(f"--port must be in 0..65535, not {args.port}")
    root = webapp.build(Path(args.out), packages)
    try:
        srv = webapp.server(root, args.port)
    except OSError as exc:
        raise LutlmError(f"cannot listen on 127.0.0.1:{args.port} ({exc.strerror or exc})") from None
    url = f"http://127.0.0.1:{srv.server_address[1]}/"
    print(f"serving {root} with {len(packages)} model(s) at {url}" + ("" if args.exit_after_check else " (Ctrl-C stops)"),
          flush=True)
    try:
        if args.check is None:
            srv.serve_forever()
            return
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        _browser_check(url, packages[0].name if packages else None, args.check, args.screenshot)
        if not args.exit_after_check:
            print("(Ctrl-C stops)", flush=True)
            threading.Event().wait()
    finally:
        srv.shutdown() if args.check is not None else None
        srv.server_close()


def _browser_check(url: str, model: str | None, prompt: str, screenshot: str | None) -> None:
    """One chat turn through headless Chromium against the running server (make demo's proof)."""
    from .headless import AppPage, chromium

    offsite: list[str] = []
    try:
        with chromium(offsite) as context:
            app = AppPage(context.new_page(), url)
            load_s = app.load(model)
            print(f"> {prompt}", flush=True)
            text, usage = app.ask(prompt, {"temperature": 0, "max_tokens": 128})
            if screenshot:
                Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
                app.page.screenshot(path=screenshot)
    except RuntimeError as exc:
        raise LutlmError(f"headless browser check failed: {exc}") from None
    print(text)
    print(f"[headless Chromium: model loaded in {load_s:.1f} s, first token after {usage['ttft_s']:.1f} s, "
          f"{usage['decode_tokens_per_s'] or 0:.2f} tok/s; requests beyond 127.0.0.1: {len(offsite)}]", flush=True)


def _bench_workload(args: argparse.Namespace) -> list[int]:
    try:
        sizes = [int(v) for v in args.prompts.split(",")]
    except ValueError:
        raise LutlmError(f"--prompts takes comma-separated token counts, not {args.prompts!r}") from None
    if not sizes or min(sizes) < 1 or args.new_tokens < 2 or args.reps < 1:
        raise LutlmError("--prompts sizes, --new-tokens (>= 2) and --reps (>= 1) must be positive")
    return sizes


def cmd_bench_model(args: argparse.Namespace) -> None:
    from lutlm_bench import model

    for pkg in args.packages:
        build.package(pkg)
    sizes = _bench_workload(args)
    where = _where(args, ("native", "cpu", "browser", "browser-cpu"))
    model.main(args.packages, sizes, args.new_tokens, args.reps, args.json, where, sys.argv)


def cmd_bench(args: argparse.Namespace) -> None:
    from lutlm_bench import suite

    sizes = _bench_workload(args)
    variants = suite.parse_list(args.variants, suite.VARIANTS, "--variants")
    systems = suite.parse_list(args.systems, suite.SYSTEMS, "--systems")
    if args.peer_budget <= 0:
        raise LutlmError("--peer-budget must be positive (seconds)")
    out = Path(args.out) if args.out else suite.default_out(args.source)
    suite.main(args.source, variants, systems, sizes, args.new_tokens, args.reps, args.peer_budget, Path(args.build),
               Path(args.json) if args.json else None, out, sys.argv)


def _device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=build.DEVICES, default="gpu",
                   help="where a model package runs: gpu (WebGPU through wgpu-py) or cpu (the WebAssembly SIMD kernels "
                        "in wasmtime, the browser's CPU path)")


def _at_least(lo: int):
    """An argparse type: an integer no smaller than `lo` (a negative --ctx is an error, not a default)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, not {value}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


class _Parser(argparse.ArgumentParser):
    """argparse with lutlm's one-line error (its subcommand parsers are of this class too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"lutlm: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lutlm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="download a model or text into the cache and verify its sha256")
    p.add_argument("names", nargs="+", metavar="NAME", help=f"one of {', '.join(ASSETS)}, or 'all'")
    p.set_defaults(func=cmd_fetch)

    p = sub.add_parser("tokenize", help="print the token ids of a text file")
    p.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    p.add_argument("file", metavar="FILE")
    p.add_argument("--special", action="store_true", help="parse special tokens such as <|im_start|>")
    p.set_defaults(func=cmd_tokenize)

    p = sub.add_parser("eval", help="evaluate a model")
    evals = p.add_subparsers(dest="metric", required=True)
    p = evals.add_parser("ppl", help="perplexity over consecutive windows of a text (no BOS)")
    p.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    p.add_argument("--text", default="wiki", help="wiki, tiny, c4, code, technical, multilingual, or a file path")
    p.add_argument("--windows", type=_at_least(1), default=40, help="number of windows (default 40)")
    p.add_argument("--window", type=_at_least(2), default=512, help="tokens per window (default 512)")
    _device_option(p)
    p.set_defaults(func=cmd_eval_ppl)

    p = sub.add_parser("quantize", help="quantise a model's weights to 4, 3, 2 bits, ternary or a mix")
    p.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    _quant_options(p, required=True)
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("compile", help="quantise (or take a quantised checkpoint) and write a model package")
    p.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    _quant_options(p, required=False)
    p.add_argument("--decode", default="lut", choices=["lut", "dequant", "dequant8"],
                   help="decode matmul: LUT (default), or the dequantise baseline with 1 or 8 rows per invocation")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("export", help="write the quantised model in another engine's format")
    formats = p.add_subparsers(dest="format", required=True)
    p = formats.add_parser("onnx", help="ONNX decoder folder for transformers.js (MatMulNBits 4-bit, or fp32)")
    p.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    _quant_options(p, required=False)
    p.add_argument("--dtype", default="q4", help="q4 (MatMulNBits; codes of up to 4 bits, power-of-two groups) or fp32")
    p.set_defaults(func=cmd_export_onnx)

    p = sub.add_parser("chat", help="interactive chat with a model package (GPU through wgpu, or --device cpu)")
    p.add_argument("package", metavar="PACKAGE")
    p.add_argument("--system", help="system message")
    p.add_argument("--max-tokens", type=_at_least(1), default=512)
    p.add_argument("--ctx", type=_at_least(1), help="context length of the KV cache (default: the model's, at most 2048)")
    _sampling_options(p, temperature=0.7)
    _device_option(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("generate", help="generate from a model package (GPU) or any SOURCE (numpy reference, greedy)")
    p.add_argument("source", metavar="SOURCE", help=SOURCE_HELP + ", or a model package")
    p.add_argument("--prompt", required=True)
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", help="system message (with --chat)")
    p.add_argument("--max-tokens", type=_at_least(1), default=128)
    p.add_argument("--ctx", type=_at_least(1), help="context length of the KV cache (default: the model's, at most 2048)")
    p.add_argument("--ids", action="store_true", help="write generated token ids instead of text")
    _sampling_options(p, temperature=None)
    _device_option(p)
    p.set_defaults(func=cmd_generate)


    p = sub.add_parser("serve", help="build the web app and serve it with model packages on 127.0.0.1")
    p.add_argument("packages", nargs="*", metavar="PACKAGE", help="default: every package under build/")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--out", default="build/web", help="where the app is assembled (default build/web)")
    p.add_argument("--check", metavar="PROMPT", help="drive one chat turn through headless Chromium once serving")
    p.add_argument("--exit-after-check", action="store_true", help="stop serving after --check (headless machines)")
    p.add_argument("--screenshot", metavar="PNG", help="with --check: save the page after the answer")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", help="lutlm against its peers on one model, one machine, one run (or: kernels, model, step)",
                       description="Without a subcommand: compile the variants, export ONNX, and measure lutlm "
                                   "(native and browser), wllama, transformers.js and llama.cpp on the same prompts.")
    p.add_argument("--source", default=DEFAULT_MODEL, help=SOURCE_HELP + f" (default {DEFAULT_MODEL})")
    # the harness names its variants and systems; `lutlm bench --help` does not import it to list them
    p.add_argument("--variants", help="lutlm variants, comma-separated (default: all, as docs/benchmarks.md lists)")
    p.add_argument("--systems", help="systems to measure, comma-separated (default: all, as docs/benchmarks.md lists)")
    _workload_options(p)
    p.add_argument("--peer-budget", type=float, default=60.0,
                   help="seconds of decoding after which a transformers.js generation is cut (default 60)")
    p.add_argument("--build", default="build/bench", help="where variants and exports are cached (default build/bench)")
    p.add_argument("--out", help="bench.json, bench.md and bench.png go here (default results/bench, "
                                 "or results/bench-NAME for another --source)")
    p.set_defaults(func=cmd_bench)
    benches = p.add_subparsers(dest="bench")
    p = benches.add_parser("kernels", help="LUT vs dequantise GEMV on SmolLM2 shapes, natively, in Chromium and on the CPU")
    p.add_argument("--where", default="native,browser,wasm", help="native (wgpu-py), browser (headless Chromium), wasm "
                                                                   "(the CPU kernels in wasmtime), comma-separated")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per case; rows give the median (default 7)")
    p.add_argument("--json", metavar="FILE", help="also write the rows (with every sample) as a JSON array")
    p.add_argument("--quick", action="store_true", help="layer shape only, fewer cases (for tests)")
    p.set_defaults(func=cmd_bench_kernels)
    p = benches.add_parser("step", help="a package's decode step (or prefill chunk) per kernel, natively and in Chromium")
    p.add_argument("package", metavar="PACKAGE")
    p.add_argument("--where", default="native,browser", help="native (wgpu-py), browser (headless Chromium), cpu (the CPU "
                                                              "kernels in wasmtime), comma-separated")
    p.add_argument("--pos", type=int, default=48, help="position of the decoded token (default 48)")
    p.add_argument("--prefill", type=int, default=0, metavar="M",
                   help="time a prefill chunk of M prompt tokens from --pos instead of a decode step")
    p.add_argument("--ctx", type=_at_least(1), help="context the cache is sized for (default: what a chat session gets)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per case; rows give the median (default 5)")
    p.add_argument("--json", metavar="FILE", help="also write the rows (with every sample) as a JSON array")
    p.add_argument("--without", default="", metavar="FEATURES",
                   help="browser adapter features to leave unused (subgroups, shader-f16), so that kernels needing "
                        "them run as their fallbacks (the rows keep the plan's kernel names): the A side of an A/B run")
    p.set_defaults(func=cmd_bench_step)
    p = benches.add_parser("model", help="load, time to first token, prefill and decode tokens/s of packages, natively and in Chromium")
    p.add_argument("packages", nargs="+", metavar="PACKAGE")
    p.add_argument("--where", default="native", help="native (wgpu-py), cpu (the CPU kernels in wasmtime), browser (the web "
                                                     "app on WebGPU in headless Chromium), browser-cpu (the app on its CPU "
                                                     "kernels), comma-separated")
    _workload_options(p)
    p.set_defaults(func=cmd_bench_model)
    return parser


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so that half-written output folders are removed on the way out."""
    raise Terminated


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM)."""


def _check_text(args: argparse.Namespace) -> None:
    """Arguments arrive as bytes; ones that are not UTF-8 would fail wherever they are first written."""
    for name, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    raise LutlmError(f"--{name.replace('_', '-')} is not valid UTF-8 text") from None


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure ends as one `lutlm: error:` line and exit status 2."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0), or the argument error already printed (2)
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    if threading.current_thread() is not threading.main_thread():
        return _run(args)
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    from runtime_py import ChatTemplateError, TokenizerError
    from runtime_py.engine import GenerationError
    from runtime_py.gpu import GPUError
    from runtime_py.package import PackageError

    try:
        _check_text(args)
        args.func(args)
    except (LutlmError, TokenizerError, ChatTemplateError, GenerationError, PackageError, GPUError) as exc:
        return _fail(str(exc))
    except (MemoryError, RecursionError) as exc:
        return _fail("out of memory" if isinstance(exc, MemoryError) else "input nested too deeply")
    except OSError as exc:
        return _fail(f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "))
    except Terminated:
        return 143
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last resort: a bug or an input no check foresaw
        return _fail(f"unexpected {type(exc).__name__}: {exc} (LUTLM_DEBUG=1 shows where; please report it)")
    return 0


def _fail(message: str) -> int:
    if os.environ.get("LUTLM_DEBUG"):
        raise
    print("lutlm: error: " + " ".join(message.split()), file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

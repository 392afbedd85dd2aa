"""Quantise a model every way the README's table lists and measure each result's perplexity.

Usage: .venv/bin/python scripts/quant_table.py [--model NAME] [--out DIR] [--rows ROW ...]

Runs `lutlm quantize` and `lutlm eval ppl` (wiki: 40 windows, tiny: 20 windows of 512 tokens) as
subprocesses, one row at a time, and prints a Markdown table; rows already measured (their
results JSON exists in DIR) are reused, so an interrupted run resumes.

Rows named `llama-TYPE` (e.g. llama-Q3_K_S) requantise the model's GGUF with llama.cpp's own
quantiser instead (llama-cpp-python, the optional `llamacpp` extra; no importance matrix, which
llama-cpp-python cannot compute) and measure the file it writes by the same windows, through the
same reference (`lutlm eval ppl` dequantises any GGUF block type). Their bpw counts the linear
layers' bytes as llama.cpp stored them, with whatever types it fell back to.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

KEEP_NORMS = ["--no-tune-norms"]  # the rows tuned before tuning trained the norm gains
ROWS: dict[str, list[str]] = {
    "rtn-4": ["--bits", "4", "--method", "rtn"],
    "rtn-3": ["--bits", "3", "--method", "rtn"],
    "rtn-2": ["--bits", "2", "--method", "rtn"],
    "rtn-t": ["--bits", "t", "--method", "rtn"],
    "gptq-4": ["--bits", "4"],
    "gptq-3": ["--bits", "3"],
    "gptq-3-g64": ["--bits", "3", "--group", "64"],
    "gptq-2": ["--bits", "2"],
    "gptq-t": ["--bits", "t"],
    "mixed-3.5": ["--bits", "mixed", "--budget", "3.5"],
    "mixed-3.0": ["--bits", "mixed", "--budget", "3.0"],
    "mixed-2.5": ["--bits", "mixed", "--budget", "2.5"],
    "gptq-3-tune": ["--bits", "3", "--tune", "2", *KEEP_NORMS],
    "gptq-2-tune": ["--bits", "2", "--tune", "2", *KEEP_NORMS],
    "mixed-2.5-tune": ["--bits", "mixed", "--budget", "2.5", "--tune", "2", *KEEP_NORMS],
    "gptq-t-tune": ["--bits", "t", "--tune", "2", *KEEP_NORMS],
    "mixed-3.5-tune": ["--bits", "mixed", "--budget", "3.5", "--tune", "2", *KEEP_NORMS],
    "gptq-3-tune-c128": ["--bits", "3", "--tune", "2", *KEEP_NORMS, "--calib-windows", "128"],
    "mixed-2.5-tune-c128": ["--bits", "mixed", "--budget", "2.5", "--tune", "2", *KEEP_NORMS, "--calib-windows", "128"],
    "gptq-2-tune-c128": ["--bits", "2", "--tune", "2", *KEEP_NORMS, "--calib-windows", "128"],
    "mixed-4.0-tune-c128": ["--bits", "mixed", "--budget", "4.0", "--tune", "2", *KEEP_NORMS, "--calib-windows", "128"],
    "gptq-3-g16": ["--bits", "3", "--group", "16"],
    "gptq-3-g16-d8": ["--bits", "3", "--group", "16", "--scale-bits", "8"],
    "gptq-3-g16-d8-tune-c128": ["--bits", "3", "--group", "16", "--scale-bits", "8", "--tune", "2", *KEEP_NORMS,
                                "--calib-windows", "128"],
    "mixed-2.5-d8-tune-c128": ["--bits", "mixed", "--budget", "2.5", "--scale-bits", "8", "--tune", "2",
                               "--calib-windows", "128", *KEEP_NORMS],
    # from here on tuning trains the norm gains too (the default since 2026-12-03)
    "gptq-2-tune-norms": ["--bits", "2", "--tune", "2"],
    "mixed-2.5-d8-tune-c256": ["--bits", "mixed", "--budget", "2.5", "--scale-bits", "8", "--tune", "2",
                               "--calib-windows", "256"],
}
EVALS = {"wiki": 40, "tiny": 20}
LUTLM = [sys.executable, "-m", "lutlm.cli"]


def ppl(source: str, text: str, windows: int) -> float:
    proc = subprocess.run([*LUTLM, "eval", "ppl", source, "--text", text, "--windows", str(windows)],
                          capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1].split()[1])


def llama_quantize(model: str, ftype: str, target: Path) -> dict:
    """Requantise MODEL's GGUF to llama.cpp's `ftype` at `target`; the linear layers' bits per
    weight and block types as written, and the seconds it took."""
    import llama_cpp
    from gguf import GGUFReader

    from lutlm.assets import resolve_source
    from lutlm.models.llama import LINEAR

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.allow_requantize = True  # the source is already quantised (Q4_1)
    t0 = time.perf_counter()
    if llama_cpp.llama_model_quantize(str(resolve_source(model)).encode(), str(target).encode(), params) != 0:
        raise SystemExit(f"llama.cpp could not quantise {model} to {ftype}")
    seconds = time.perf_counter() - t0
    linear = [t for t in GGUFReader(target).tensors if t.name.split(".")[-2] in LINEAR]
    bits = sum(int(t.n_bytes) * 8 for t in linear) / sum(int(t.n_elements) for t in linear)
    types = Counter(t.tensor_type.name for t in linear)
    return {"bpw_linear": bits, "types": dict(types), "seconds": seconds}


def check_rows(rows: list[str]) -> None:
    """Every row known before the first one runs (a row can take an hour), llama-TYPE rows only
    with llama-cpp-python installed and TYPE one of its file types."""
    llama = [r.removeprefix("llama-") for r in rows if r.startswith("llama-")]
    unknown = [r for r in rows if r != "source" and r not in ROWS and not r.startswith("llama-")]
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(unknown)} (known: source, {', '.join(ROWS)}, llama-TYPE)")
    if not llama:
        return
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("llama-TYPE rows need llama-cpp-python: .venv/bin/pip install -e '.[llamacpp]'") from None
    types = sorted(n.removeprefix("LLAMA_FTYPE_MOSTLY_") for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_"))
    bad = [t for t in llama if t not in types]
    if bad:
        raise SystemExit(f"unknown llama.cpp types: {', '.join(bad)} (known: {', '.join(types)})")


def measure(model: str, row: str, out: Path) -> dict:
    result_file = out / f"{row}.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    if row == "source":
        result = {"row": row, "bpw_linear": None, "seconds": 0.0, "source": model}
        target = model
    elif row.startswith("llama-"):
        target = str(out / f"{row}.gguf")
        result = {"row": row, **llama_quantize(model, row.removeprefix("llama-"), Path(target))}
    else:
        target = str(out / row)
        t0 = time.perf_counter()
        subprocess.run([*LUTLM, "quantize", model, *ROWS[row], "-o", target], check=True, stdout=subprocess.DEVNULL)
        info = json.loads((out / row / "quantized.json").read_text())
        result = {"row": row, "bpw_linear": info["bpw_linear"], "bpw_embedding": info["bpw_embedding"],
                  "mix": info["mix"], "seconds": info["seconds"], "wall_seconds": round(time.perf_counter() - t0, 1)}
    for text, windows in EVALS.items():
        result[text] = ppl(target, text, windows)
    result_file.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--out", default="results/quant")
    parser.add_argument("--rows", nargs="*", default=["source", *ROWS],
                        help="rows of the table, or llama-TYPE for llama.cpp's quantiser (e.g. llama-Q2_K)")
    args = parser.parse_args()
    check_rows(args.rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| variant | bpw (linear) | wiki (40) | tiny (20) | quantisation time |")
    print("|---|---|---|---|---|")
    for row in args.rows:
        r = measure(args.model, row, out)
        bpw = "5.00 (shipped Q4_1)" if row == "source" else f"{r['bpw_linear']:.3f}"
        if "types" in r:
            bpw += " (" + ", ".join(f"{n} {t}" for t, n in sorted(r["types"].items())) + ")"
        secs = "" if row == "source" else f"{r['seconds']:.0f} s"
        print(f"| {row} | {bpw} | {r['wiki']:.2f} | {r['tiny']:.2f} | {secs} |", flush=True)


if __name__ == "__main__":
    main()

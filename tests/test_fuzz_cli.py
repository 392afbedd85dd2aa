"""Hostile command lines: every option of every command given values a careless user or an attacker
would, and every file argument given what is not a regular file. Each case runs as its own process
under a memory and a time limit (tests/hostile.py); it must succeed or end in one `lutlm: error:`
line with exit status 2, and the values that cannot be right must end in the error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import hostile

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

# Values no option of lutlm accepts (a negative count, NaN, infinity, text, nothing, bytes that
# are not UTF-8 as Python passes them on), and values some options accept.
NEVER = ["-1", "nan", "inf", "-inf", "1e309", "abc", "", "\udcff"]
MAYBE = ["0", "1", "0.5", "2147483648", "18446744073709551616"]

# (command line before the option, the option, values tried): PKG, HF, TEXT and OUT are filled in.
GENERATE = ["generate", "PKG", "--prompt", "hi", "--max-tokens", "2"]
OPTIONS = [
    (GENERATE, "--max-tokens", NEVER + ["0"]),
    (GENERATE, "--ctx", NEVER + MAYBE),
    (GENERATE, "--temperature", NEVER + ["101"]),
    (GENERATE, "--top-p", NEVER + ["0", "1.5"]),
    (GENERATE, "--top-k", NEVER + MAYBE),
    (GENERATE, "--seed", NEVER + ["4294967296", "18446744073709551616"]),
    (GENERATE, "--repetition-penalty", NEVER + ["0", "11"]),
    (["generate", "HF", "--prompt", "hi", "--max-tokens", "2"], "--ctx", NEVER + ["0", "1"]),
    (["chat", "PKG", "--max-tokens", "2"], "--ctx", NEVER + ["0", "2147483648"]),
    (["chat", "PKG"], "--top-p", NEVER),
    (["eval", "ppl", "HF", "--text", "TEXT", "--windows", "1", "--window", "8"], "--windows", NEVER + ["0"]),
    (["eval", "ppl", "HF", "--text", "TEXT", "--windows", "1"], "--window", NEVER + ["0", "1", "2147483648"]),
    *[(["quantize", "HF", "--bits", "4", "--method", "rtn", "-o", "OUT"], option, NEVER + extra) for option, extra in [
        ("--bits", ["0", "1", "5", "8", "16", "mixed"]), ("--group", ["0", "7", "2147483648"]),
        ("--scale-bits", ["0", "4", "32"]), ("--embed-bits", ["0", "2", "16"]), ("--method", ["gptq2"]),
        ("--budget", ["0", "3"]), ("--damp", []), ("--calib-windows", ["0"]), ("--tune-lr", ["0"]),
        ("--calib", ["wiki2", "TEXT,"])]],
    (["quantize", "HF", "--bits", "4", "--tune", "1", "--calib", "TEXT", "-o", "OUT"], "--window", NEVER + ["0", "1"]),
    (["compile", "HF", "--method", "rtn", "-o", "OUT"], "--decode", NEVER + ["dequant16"]),
    (["export", "onnx", "HF", "--method", "rtn", "-o", "OUT"], "--dtype", NEVER + ["q8"]),
    (["serve", "PKG", "--out", "OUT"], "--port", NEVER + ["65536", "2147483648"]),
    (["bench", "step", "PKG", "--where", "native"], "--pos", NEVER),
    (["bench", "step", "PKG", "--where", "native"], "--rounds", NEVER + ["0"]),
    (["bench", "kernels"], "--where", NEVER + ["gpu", ","]),
    (["bench", "model", "PKG"], "--prompts", NEVER + ["0", "1,,2"]),
]

# File arguments that are not a readable regular file of a sane size.
def _fifo(p: Path) -> Path:
    os.mkfifo(p)
    return p


def _sparse(p: Path) -> Path:
    with open(p, "wb") as f:
        f.truncate(6 << 30)
    return p


def _zero_link(p: Path) -> Path:
    p.symlink_to("/dev/zero")
    return p


def _loop(p: Path) -> Path:
    p.symlink_to(p)
    return p


def _folder(p: Path) -> Path:
    p.mkdir()
    return p


def _binary(p: Path) -> Path:
    p.write_bytes(b"\xff\xfe\x00\x80 not text")
    return p


BAD_FILES = {"fifo": _fifo, "sparse-6GiB": _sparse, "dev-zero": _zero_link, "symlink-loop": _loop, "folder": _folder,
             "not-utf8": _binary, "missing": lambda p: p}
FILE_COMMANDS = [
    ["tokenize", "HF", "FILE"],
    ["eval", "ppl", "HF", "--text", "FILE", "--windows", "1", "--window", "8"],
    ["quantize", "HF", "--bits", "4", "--method", "gptq", "--calib", "FILE", "--window", "8", "-o", "OUT"],
]


def _cases() -> list[tuple[str, list[str], bool]]:
    """(id, argv with placeholders, whether it must be refused)."""
    cases = []
    for prefix, option, values in OPTIONS:
        for value in values:
            cases.append((f"{' '.join(prefix[:2])} {option}={value!r}", [*prefix, option, value], value in NEVER))
    for command in FILE_COMMANDS:
        for kind in BAD_FILES:
            cases.append((f"{' '.join(command[:2])} FILE={kind}", [a if a != "FILE" else f"FILE:{kind}" for a in command],
                          True))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def results(tiny_package, tmp_path_factory) -> dict[str, tuple[hostile.Result, Path]]:
    """Each case's result and its working folder (where its OUT would be written)."""
    root = tmp_path_factory.mktemp("fuzz-cli")
    hf = tiny_package.parent / "hf"
    (root / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 20)
    runs = []
    for i, (case_id, argv, _) in enumerate(CASES):
        work = root / f"case{i}"
        work.mkdir()
        names = {"PKG": str(tiny_package), "HF": str(hf), "TEXT": str(root / "text.txt"), "OUT": str(work / "out")}
        filled = []
        for arg in argv:
            if arg.startswith("FILE:"):
                arg = str(BAD_FILES[arg[5:]](work / "file"))
            filled.append(",".join(names.get(part, part) for part in arg.split(",")))
        runs.append((filled, str(work)))
    done = hostile.run(runs)
    out = {case[0]: (result, Path(cwd)) for case, result, (_, cwd) in zip(CASES, done, runs)}
    print(hostile.report("cli", [(case_id, r, problem(r, work, must)) for (case_id, _, must), (r, work)
                                 in zip(CASES, out.values())]))
    return out


def problem(result: hostile.Result, work: Path, must_refuse: bool) -> str | None:
    """Why a case's outcome is wrong, or None: a refusal must be clean, and leave nothing behind."""
    if must_refuse or result.status != 0:
        why = result.one_line_error()
        if why:
            return why
    if result.peak_mib > 4096:
        return f"peak memory {result.peak_mib:.0f} MiB"
    if [p.name for p in work.iterdir() if p.name.startswith(".")]:
        return "a temporary folder was left behind"
    if result.status != 0 and (work / "out").exists():
        return "a refused command wrote its output"
    return None


@pytest.mark.parametrize("case_id, must_refuse", [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_command_line(results, case_id, must_refuse):
    result, work = results[case_id]
    why = problem(result, work, must_refuse)
    assert why is None, f"{why}: {result.argv}\n{result.stderr[-3000:]}"

"""runtime_py must run under Pyodide: standard library only, never numpy, never the compile side."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "runtime_py"

BLOCK_NUMPY = """
import sys

import pytest
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ImportError("numpy is blocked for this test")
sys.meta_path.insert(0, Block())
"""


@pytest.mark.model
def test_runtime_imports_and_tokenizes_without_numpy(tokenizer_json):
    code = BLOCK_NUMPY + f"""
import runtime_py
from runtime_py import Tokenizer, ChatTemplate
tok = Tokenizer.from_file({str(tokenizer_json)!r})
ids = tok.encode(ChatTemplate().render([{{"role": "user", "content": "Héllo 42"}}]), special=True)
assert tok.decode(ids) == "<|im_start|>user\\nHéllo 42<|im_end|>\\n<|im_start|>assistant\\n"
assert "numpy" not in sys.modules and "lutlm" not in sys.modules
try:
    import numpy
except ImportError:
    print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=RUNTIME.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_runtime_sources_import_only_the_standard_library():
    allowed = set(sys.stdlib_module_names) | {"runtime_py", "js", "pyodide"}
    for source in RUNTIME.rglob("*.py"):
        # the native backends may import wgpu-py and wasmtime (and nothing else); Pyodide never imports them
        ok = allowed | {"wgpu"} if source.name == "gpu_wgpu.py" else allowed | {"wasmtime"} \
            if source.name == "cpu_wasmtime.py" else allowed
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [] if node.level else [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in ok, f"{source.name} imports {name}"


def test_grid_expressions_evaluate_without_eval():
    from runtime_py.expr import ExprError, evaluate

    assert evaluate("((n + 63) // 64)", {"n": 1536}) == 24
    assert evaluate("max(1, min(m, 8)) * 3 - -2 % 5", {"m": 20}) == 8 * 3 - (-2 % 5)
    assert evaluate("(0 - 7) // 2", {}) == -4  # floor division, as TIR's floordiv
    # parsed once, evaluated for each set of names
    assert [evaluate("min(pos + 1, ctx)", {"pos": p, "ctx": 8}) for p in (0, 3, 20)] == [1, 4, 8]
    with pytest.raises(ExprError, match="unknown name"):
        evaluate("min(pos + 1, ctx)", {"pos": 1})
    with pytest.raises(ExprError, match="string"):
        evaluate(["n"], {"n": 1})
    for bad, why in [("n +", "expected"), ("__import__('os')", "unexpected"), ("x * 2", "unknown name"),
                     ("n // 0", "division by zero"), ("1" * 1001, "at most"), ("2 ** 3", "unexpected"),
                     ("min(1)", "expected ,"), ("(1", r"expected \)"), ("(" * 400 + "1" + ")" * 400, "nested"),
                     ("-" * 999 + "1", "nested"), ("min(" * 100 + "1" + ", 1)" * 100, "nested")]:
        with pytest.raises(ExprError, match=why):
            evaluate(bad, {"n": 1})

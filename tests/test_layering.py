"""Which way the packages import: the benchmark harness (lutlm_bench) uses the product (lutlm), the
compiler (lutlm) uses the runtime (runtime_py), never the other way round, and lutlm's modules
import each other without a cycle. Read from the sources with `ast`, plus the command line run
with the harness made unimportable."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"lutlm": ROOT / "compile", "runtime_py": ROOT / "runtime_py", "lutlm_bench": ROOT / "bench"}


def modules(package: str) -> dict[str, Path]:
    """Every module of `package` (as pyproject.toml maps it to a folder) by its dotted name."""
    found = {}
    for path in sorted(PACKAGES[package].rglob("*.py")):
        parts = path.relative_to(PACKAGES[package]).with_suffix("").parts
        found[".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return found


ALL = {name: path for package in PACKAGES for name, path in modules(package).items()}


def _type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` (its imports never run)."""
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or \
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _statements(body: list[ast.stmt], at_import: bool):
    """The import statements of a module's body: with `at_import`, those that run when it is
    imported (not in functions, not under TYPE_CHECKING), else all of them."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif at_import and (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or _type_checking(node)):
            continue
        else:
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from _statements([n for n in getattr(node, field, []) if isinstance(n, ast.AST)], at_import)


def imports(module: str, at_import: bool = True) -> list[tuple[str, int]]:
    """The modules `module` imports (dotted, relative ones resolved) with each one's line."""
    path = ALL[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in _statements(ast.parse(path.read_text(encoding="utf-8")).body, at_import):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([node.module] if node.module else []))
        for alias in node.names:  # `from package import submodule` imports the submodule
            out.append((f"{base}.{alias.name}" if f"{base}.{alias.name}" in ALL else base, node.lineno))
    return out


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def import_graph(package: str) -> dict[str, set[str]]:
    """What each module of `package` makes Python import when it is imported: the modules it names
    and their packages (whose __init__ runs first), except the packages it is itself inside."""
    graph = {}
    for module in modules(package):
        targets = set()
        for target, _ in imports(module):
            if target in ALL and target.startswith(package):
                targets |= {target} | (_ancestors(target) - _ancestors(module) - {module})
        graph[module] = targets - {module}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph (its modules in order, the first repeated last), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            found = visit(nxt)
            if found:
                return found
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        found = visit(start)
        if found:
            return found
    return None


def offending(package: str, banned: tuple[str, ...], at_import: bool) -> list[str]:
    """`module:line imports name` for every import in `package` of a module in `banned`."""
    return [f"{module}:{line} imports {target}" for module in modules(package)
            for target, line in imports(module, at_import) if target.split(".")[0] in banned or target in banned]


def test_the_command_line_runs_without_the_harness():
    """`lutlm --help` and every command's help, with lutlm_bench unimportable: the product does not
    need its benchmark harness to start (only `lutlm bench ...` imports it, when it runs)."""
    script = """
import contextlib, io, sys

class Harness:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "lutlm_bench":
            raise ImportError(f"{name} imported")

sys.meta_path.insert(0, Harness())
from lutlm.cli import main

for argv in sys.argv[1:]:
    with contextlib.redirect_stdout(io.StringIO()):
        code = main([*argv.split(), "--help"])
    assert code == 0, (argv, code)
assert "lutlm_bench" not in sys.modules
print("ok")
"""
    commands = ["", "fetch", "tokenize", "eval", "eval ppl", "quantize", "compile", "export", "export onnx", "chat",
                "generate", "serve", "bench", "bench kernels", "bench step", "bench model"]
    proc = subprocess.run([sys.executable, "-c", script, *commands], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_the_product_imports_the_harness_only_in_functions():
    assert offending("lutlm", ("lutlm_bench",), at_import=True) == []
    assert offending("runtime_py", ("lutlm_bench",), at_import=True) == []


def test_the_harness_calls_the_library_not_the_command_line():
    assert offending("lutlm_bench", ("lutlm.cli",), at_import=False) == []


def test_the_runtime_imports_nothing_of_the_compiler():
    """runtime_py runs alone in the browser (Pyodide), where neither lutlm nor the harness exists."""
    assert offending("runtime_py", ("lutlm", "lutlm_bench"), at_import=False) == []


def test_lutlm_modules_import_each_other_without_a_cycle():
    graph = import_graph("lutlm")
    assert graph["lutlm.cli"] >= {"lutlm.build"}  # the graph sees what it should
    assert graph["lutlm.intake"] >= {"lutlm.intake.gguf", "lutlm.checkpoint"}
    found = cycle(graph)
    assert found is None, "import cycle: " + " -> ".join(found)

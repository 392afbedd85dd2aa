"""Lower a TIR PrimFunc to WGSL with Apache TVM and describe how to launch it.

TVM's webgpu codegen binds the buffers it uses at 0..n-1 (in its own order, unused ones dropped),
then one uniform struct of the scalar arguments ending in `packGridDimX`. The WGSL text is the
contract, so the metadata is read back from it rather than assumed: bindings with their access
mode and element type, the uniform fields in order, and the workgroup size. The dispatch grid
comes from the PrimFunc's `blockIdx` bindings, printed as arithmetic over the scalar arguments
(the runtime evaluates it with a tiny evaluator, never `eval`).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import LutlmError

_BINDING = re.compile(r"@group\(0\) @binding\((\d+)\) var<storage, (read|read_write)> (\w+?)_ptr : array<(\w+|vec4<\w+>)>;")
_UNIFORM = re.compile(r"struct PODArgs \{(.*?)\}", re.S)
_FIELD = re.compile(r"(\w+)\s*:\s*(\w+)")
_WORKGROUP = re.compile(r"@workgroup_size\((\d+), (\d+), (\d+)\)")
_ENTRY = re.compile(r"@compute @workgroup_size\([^)]*\)\s*fn (\w+)\(")
_TARGET = {"kind": "webgpu", "host": {"kind": "llvm"}}
# WGSL builtins TVM has no intrinsic for: kernels call these names (T.call_pure_extern), and
# the emitted shader gets the definitions of the ones it uses
_HELPERS = {
    "lutlm_f16_lo": "fn lutlm_f16_lo(h : u32) -> f32 { return unpack2x16float(h).x; }",
    "lutlm_f16_hi": "fn lutlm_f16_hi(h : u32) -> f32 { return unpack2x16float(h).y; }",
}


@dataclass(frozen=True)
class Binding:
    name: str
    access: str  # "read" or "read_write"
    dtype: str  # WGSL element type: f32, u32, i32, f16, or vec4<f32> (four per load)


@dataclass
class Kernel:
    """One compute shader and everything a runtime needs to launch it."""

    name: str
    wgsl: str
    entry: str
    bindings: list[Binding]  # binding i is bindings[i]; the uniform struct comes after them
    uniforms: list[tuple[str, str]]  # (field, WGSL scalar type), 4 bytes each, in order
    workgroup: tuple[int, int, int]
    grid: tuple[str, str, str]  # workgroup counts as expressions of the scalar arguments
    features: list[str] = field(default_factory=list)  # adapter features needed, e.g. shader-f16

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["bindings"] = [asdict(b) for b in self.bindings]
        return d


def expr_text(e: Any) -> str:
    """A TIR index expression as text in the grid-expression grammar (+ - * // % min max)."""
    from tvm import tirx

    ops = {tirx.Add: "+", tirx.Sub: "-", tirx.Mul: "*", tirx.FloorDiv: "//", tirx.FloorMod: "%"}
    if isinstance(e, tirx.IntImm):
        return str(int(e.value))
    if isinstance(e, tirx.Var):
        return e.name
    if type(e) in ops:
        return f"({expr_text(e.a)} {ops[type(e)]} {expr_text(e.b)})"
    if isinstance(e, (tirx.Min, tirx.Max)):
        return f"{'min' if isinstance(e, tirx.Min) else 'max'}({expr_text(e.a)}, {expr_text(e.b)})"
    raise LutlmError(f"grid extent {e} is not plain integer arithmetic")


def _grid(func: Any) -> tuple[str, str, str]:
    from tvm import tirx

    extents = {"blockIdx.x": "1", "blockIdx.y": "1", "blockIdx.z": "1"}
    todo = [func.body]
    while todo:
        node = todo.pop()
        if node is None:
            continue
        if isinstance(node, tirx.For) and node.kind == tirx.ForKind.THREAD_BINDING:
            tag = node.thread_binding.thread_tag
            if tag in extents:
                extents[tag] = expr_text(node.extent)
        for attr in ("body", "then_case", "else_case"):
            child = getattr(node, attr, None)
            if isinstance(child, tirx.Stmt):
                todo.append(child)
        if isinstance(node, tirx.SeqStmt):
            todo.extend(node.seq)
    return extents["blockIdx.x"], extents["blockIdx.y"], extents["blockIdx.z"]


def _subgroup_lane(wgsl: str, name: str) -> str:
    """Define `lutlm_lane()`, the invocation's subgroup_invocation_id, for kernels that call it:
    only the entry point can receive a builtin, so it is copied into a private variable as the
    entry point's first statement."""
    head, brace, body = wgsl.partition(") {\n")
    if not brace or not _ENTRY.search(head):
        raise LutlmError(f"kernel {name}: no entry point signature to add the subgroup builtin to")
    head = head.rstrip() + ",\n  @builtin(subgroup_invocation_id) lutlm_sid_in : u32\n"
    return ("enable subgroups;\nvar<private> lutlm_sid : u32;\n" + head + brace + "  lutlm_sid = lutlm_sid_in;\n"
            + body + "\nfn lutlm_lane() -> i32 { return i32(lutlm_sid); }\n")


def emit(func: Any, name: str) -> Kernel:
    """Build `func` for the webgpu target and read its launch metadata off the WGSL."""
    import tvm

    func = func.with_attr("global_symbol", name)
    # Without CSE, TVM would hoist common subexpressions of the scalar arguments into extra
    # uniforms computed by its host code, which no WebGPU runtime of ours runs.
    with tvm.transform.PassContext(config={"tirx.disable_cse_tir": True}):
        rt = tvm.tirx.build(tvm.IRModule({name: func}), target=tvm.target.Target(_TARGET))
    # TVM's webgpu codegen has only workgroupBarrier, which orders workgroup memory; kernels that
    # pass values through storage buffers between barriers also need storageBarrier.
    wgsl = rt.imports[0].inspect_source().replace("workgroupBarrier();", "storageBarrier(); workgroupBarrier();")
    wgsl += "".join("\n" + d for n, d in _HELPERS.items() if n + "(" in wgsl)  # after any `enable`
    if "lutlm_lane(" in wgsl:
        wgsl = _subgroup_lane(wgsl, name)
    entries = _ENTRY.findall(wgsl)
    if len(entries) != 1:
        raise LutlmError(f"kernel {name}: expected one entry point in TVM's WGSL, found {entries}")
    bindings = [Binding(n, a, t) for i, (idx, a, n, t) in enumerate(_BINDING.findall(wgsl))
                if int(idx) == i]
    uniform = _UNIFORM.search(wgsl)
    uniforms = _FIELD.findall(uniform.group(1)) if uniform else []
    wg = tuple(int(v) for v in _WORKGROUP.search(wgsl).groups())
    if f"@binding({len(bindings)}) var<uniform>" not in wgsl:
        raise LutlmError(f"kernel {name}: bindings are not numbered 0..{len(bindings) - 1}")
    params = {p.name for p in func.params} | {"packGridDimX"}
    if any(f not in params for f, _ in uniforms):
        raise LutlmError(f"kernel {name}: uniforms {uniforms} are not all scalar arguments")
    features = [f for f, directive in (("shader-f16", "enable f16;"), ("subgroups", "enable subgroups;"))
                if directive in wgsl]
    return Kernel(name, wgsl, entries[0], bindings, uniforms, wg, _grid(func), features)

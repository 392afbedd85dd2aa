"""Read and validate a model package (untrusted input) before anything touches the GPU.

Every field is type- and bound-checked, paths stay inside the package, tensor ranges inside their
shard, every reference in a plan resolves, and each shard's sha256 is verified when it is read
(the error names the shard). Works on bytes so the browser can hand in what it fetched.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from .expr import ExprError, evaluate

FORMAT = "lutlm-package"
VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_PATH = re.compile(r"(?:kernels|shards)/[A-Za-z0-9_.\-]{1,128}")
_TYPES = {"i32", "u32", "f32"}
_DTYPES = {"u32", "f32", "i32", "f16"}
_BINDING_DTYPES = _DTYPES | {"vec4<f32>"}
MAX_BYTES = 1 << 32
CONFIG_BOUNDS = {"n_layer": 1024, "n_embd": 1 << 16, "n_head": 1024, "n_head_kv": 1024, "head_dim": 1024,
                 "n_ff": 1 << 18, "n_vocab": 1 << 21, "n_ctx": 1 << 21, "n_rot": 1024}


class PackageError(ValueError):
    """A package that is not what this runtime reads, or is damaged."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise PackageError(msg)


def _int(value: Any, what: str, lo: int = 0, hi: int = MAX_BYTES) -> int:
    _check(isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi,
           f"manifest: {what} must be an integer in [{lo}, {hi}], not {value!r}")
    return value


@dataclass
class Manifest:
    data: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.data["config"]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def parse_manifest(text: bytes | str) -> Manifest:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackageError(f"manifest.json is not JSON ({exc})") from None
    _check(isinstance(data, dict), "manifest.json is not an object")
    _check(data.get("format") == FORMAT and data.get("version") == VERSION,
           f"package format {data.get('format')!r} version {data.get('version')!r}; "
           f"this runtime reads {FORMAT!r} version {VERSION}")
    cfg = data.get("config")
    _check(isinstance(cfg, dict), "manifest: config missing")
    for key, hi in CONFIG_BOUNDS.items():
        _int(cfg.get(key), f"config.{key}", 1, hi)
    for key in ("rope_theta", "rms_eps"):
        _check(isinstance(cfg.get(key), (int, float)) and cfg[key] > 0, f"manifest: config.{key} must be positive")
    _check(cfg["n_head"] % cfg["n_head_kv"] == 0, "manifest: n_head must be a multiple of n_head_kv")
    _int(data.get("chunk"), "chunk", 1, 4096)
    _int(data.get("max_ctx"), "max_ctx", 1, 1 << 21)
    eos = data.get("eos_ids")
    _check(isinstance(eos, list) and all(isinstance(i, int) and 0 <= i < cfg["n_vocab"] for i in eos),
           "manifest: eos_ids must be token ids")
    shards = data.get("shards")
    _check(isinstance(shards, list) and 0 < len(shards) <= 10000, "manifest: shards must be a non-empty list")
    for i, s in enumerate(shards):
        _check(isinstance(s, dict) and isinstance(s.get("file"), str) and bool(_PATH.fullmatch(s["file"])),
               f"manifest: shard {i} has no valid file name")
        _int(s.get("bytes"), f"shard {s['file']} bytes")
        _check(isinstance(s.get("sha256"), str) and bool(_HEX64.fullmatch(s["sha256"])), f"manifest: shard {s['file']} sha256")
    tensors = data.get("tensors")
    _check(isinstance(tensors, dict) and tensors, "manifest: tensors missing")
    for name, t in tensors.items():
        _check(bool(_NAME.fullmatch(name)) and isinstance(t, dict), f"manifest: bad tensor entry {name!r}")
        shard = _int(t.get("shard"), f"tensor {name} shard", 0, len(shards) - 1)
        offset, size = _int(t.get("offset"), f"tensor {name} offset"), _int(t.get("bytes"), f"tensor {name} bytes", 4)
        _check(offset + size <= shards[shard]["bytes"], f"manifest: tensor {name} runs past the end of its shard")
        _check(t.get("dtype") in _DTYPES, f"manifest: tensor {name} dtype {t.get('dtype')!r}")
    kernels = data.get("kernels")
    _check(isinstance(kernels, dict) and kernels, "manifest: kernels missing")
    for kid, k in kernels.items():
        _check(bool(_NAME.fullmatch(kid)) and isinstance(k, dict), f"manifest: bad kernel entry {kid!r}")
        _check(isinstance(k.get("file"), str) and bool(_PATH.fullmatch(k["file"])), f"manifest: kernel {kid} file")
        _check(isinstance(k.get("entry"), str) and bool(_NAME.fullmatch(k["entry"])), f"manifest: kernel {kid} entry")
        b = k.get("bindings")
        _check(isinstance(b, list) and 0 < len(b) <= 16 and all(
            isinstance(x, dict) and x.get("access") in ("read", "read_write") and x.get("dtype") in _BINDING_DTYPES
            for x in b), f"manifest: kernel {kid} bindings")
        u = k.get("uniforms")
        _check(isinstance(u, list) and len(u) <= 32 and all(
            isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) and x[1] in _TYPES for x in u),
            f"manifest: kernel {kid} uniforms")
        wg = k.get("workgroup")
        _check(isinstance(wg, list) and len(wg) == 3 and all(isinstance(v, int) and 1 <= v <= 1024 for v in wg)
               and wg[0] * wg[1] * wg[2] <= 1024, f"manifest: kernel {kid} workgroup")
        g = k.get("grid")
        _check(isinstance(g, list) and len(g) == 3 and all(isinstance(e, str) and len(e) <= 1000 for e in g),
               f"manifest: kernel {kid} grid")
        for e in g:  # parses, and names only the kernel's own uniforms
            try:
                evaluate(e, {f: 1 for f, _ in u})
            except ExprError as exc:
                raise PackageError(f"manifest: kernel {kid} grid: {exc}") from None
        _check(isinstance(k.get("features", []), list), f"manifest: kernel {kid} features")
    for kid, k in kernels.items():  # a fallback stands in for its kernel: same bindings and uniforms, no features
        if "fallback" in k:
            fb = kernels.get(k["fallback"]) if isinstance(k["fallback"], str) else None
            _check(fb is not None and not fb.get("features") and "fallback" not in fb
                   and [(b.get("name"), b["access"], b["dtype"]) for b in fb["bindings"]]
                   == [(b.get("name"), b["access"], b["dtype"]) for b in k["bindings"]] and fb["uniforms"] == k["uniforms"],
                   f"manifest: kernel {kid} fallback {k['fallback']!r} is not a kernel with the same bindings and "
                   "uniforms that needs no adapter feature")
    buffers = data.get("buffers")
    _check(isinstance(buffers, dict) and all(bool(_NAME.fullmatch(n)) and isinstance(e, str) for n, e in buffers.items()),
           "manifest: buffers must map names to size expressions")
    plans = data.get("plans")
    _check(isinstance(plans, dict) and all(p in plans for p in ("prefill", "decode", "head", "greedy", "sample")),
           "manifest: plans prefill, decode, head, greedy and sample are required")
    for pname, steps in plans.items():
        _check(isinstance(steps, list) and len(steps) <= 100000, f"manifest: plan {pname}")
        for i, st in enumerate(steps):
            where = f"plan {pname} step {i}"
            _check(isinstance(st, dict) and st.get("kernel") in kernels, f"manifest: {where} names no known kernel")
            k = kernels[st["kernel"]]
            bind = st.get("bind")
            _check(isinstance(bind, list) and len(bind) == len(k["bindings"]) and all(
                isinstance(n, str) and (n in buffers or n in tensors) for n in bind),
                f"manifest: {where} binds unknown buffers or the wrong number of them")
            sizes = st.get("sizes")
            want = {f for f, _ in k["uniforms"]} - {"packGridDimX"}
            _check(isinstance(sizes, dict) and set(sizes) == want and all(
                isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in sizes.values()),
                f"manifest: {where} sizes must give exactly {sorted(want)}")
    return Manifest(data)


def buffer_sizes(manifest: Manifest, ctx: int, max_binding: int) -> dict[str, int]:
    """Byte size of every activation buffer for a context of `ctx` tokens, bounded by the adapter."""
    names = {"ctx": ctx, "chunk": manifest["chunk"]}
    sizes = {}
    for name, expr in manifest["buffers"].items():
        try:
            size = evaluate(expr, names)
        except ExprError as exc:
            raise PackageError(f"manifest: buffer {name}: {exc}") from None
        _check(0 < size <= max_binding, f"buffer {name} needs {size} bytes at context {ctx}; "
                                        f"the adapter binds at most {max_binding}")
        sizes[name] = size
    return sizes


def verify_shard(manifest: Manifest, index: int, data: bytes) -> bytes:
    shard = manifest["shards"][index]
    if len(data) != shard["bytes"]:
        raise PackageError(f"{shard['file']}: {len(data)} bytes, the manifest says {shard['bytes']} (truncated or replaced)")
    if hashlib.sha256(data).hexdigest() != shard["sha256"]:
        raise PackageError(f"{shard['file']}: sha256 mismatch (the file changed or is damaged)")
    return data


def load_tensors(manifest: Manifest, read: Callable[[str], bytes]) -> dict[str, memoryview]:
    """Every tensor's bytes, each shard read once through `read(path)` and verified first."""
    out: dict[str, memoryview] = {}
    by_shard: dict[int, list[str]] = {}
    for name, t in manifest["tensors"].items():
        by_shard.setdefault(t["shard"], []).append(name)
    for index, names in sorted(by_shard.items()):
        path = manifest["shards"][index]["file"]
        try:
            data = memoryview(verify_shard(manifest, index, read(path)))
        except OSError as exc:
            raise PackageError(f"{path}: cannot read ({exc.strerror or exc})") from None
        for name in names:
            t = manifest["tensors"][name]
            out[name] = data[t["offset"]: t["offset"] + t["bytes"]]
    return out

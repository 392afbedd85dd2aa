"""Read and validate a model package (untrusted input) before anything touches the GPU.

Every field is type- and bound-checked when the manifest is parsed: paths stay inside the package,
tensor ranges inside their shard, every reference in a plan resolves, and every expression (plan
sizes, dispatch grids, buffer sizes) evaluates for the values the engine will give it. Every file
the manifest references (tokenizer.json, each kernel, each shard) carries its bytes and sha256 and
is verified when it is read (the error names the file). Works on bytes so the browser can hand in
what it fetched; `folder_reader` reads a package folder on disk, refusing anything that is not a
regular file inside it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import reprlib
import stat
from dataclasses import dataclass
from typing import Any, Callable

from .expr import ExprError, evaluate, value
from .tokenizer import Tokenizer, TokenizerError

# The format this module owns (its contract: docs/package-format.md). The writer, compile/package.py,
# imports these; the browser worker asks this module for them. A reader refuses any other version.
FORMAT = "lutlm-package"
VERSION = 2
_HEX64 = re.compile(r"[0-9a-f]{64}")
NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")  # the package's name (its folder's), tensor, kernel, plan and buffer names
_PATH = re.compile(r"(?:kernels|shards)/[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")
_TOKENIZER = re.compile(r"tokenizer\.json")  # where the runtime looks for it
_SOURCE = re.compile(r"[^/\\\x00-\x1f]{0,255}")  # a base name: the package must not record a machine's paths
_TYPES = {"i32", "u32", "f32"}
_DTYPES = {"u32", "f32", "i32", "f16"}
_BINDING_DTYPES = _DTYPES | {"vec4<f32>"}
_PLANS = ("prefill", "decode", "head", "greedy", "sample")
MAX_BYTES = 1 << 32
MANIFEST_MAX_BYTES = 64 << 20  # the manifest records no size of its own
TOKENIZER_MAX_BYTES = 64 << 20
KERNEL_MAX_BYTES = 4 << 20
TEMPLATE_MAX_CHARS = 1 << 20
MAX_PLAN_STEPS = 4096  # about 14 a layer: SmolLM2-135M's decode plan has 422 for its 30 layers
MAX_STEPS = 16384
F32_MAX = 3.4028234663852886e38
CONFIG_BOUNDS = {"n_layer": 1024, "n_embd": 1 << 16, "n_head": 1024, "n_head_kv": 1024, "head_dim": 1024,
                 "n_ff": 1 << 18, "n_vocab": 1 << 21, "n_ctx": 1 << 21, "n_rot": 1024}
# The names the engine binds when it evaluates a plan step's sizes (Engine._variables), with their
# types there; each expression is tried at load with all of them at 1 and at the model's context.
VARIABLES: dict[str, type] = {"m": int, "pos": int, "ctx": int, "temperature": float, "top_k": int, "top_p": float,
                              "seed": int, "step": int, "penalty": float, "seen_count": int}

Reader = Callable[[str, "int | None"], bytes]  # (package-relative path, its bytes or None for the manifest)


class PackageError(ValueError):
    """A package that is not what this runtime reads, or is damaged."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise PackageError(msg)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any, what: str, lo: int = 0, hi: int = MAX_BYTES) -> int:
    _check(_is_int(value) and lo <= value <= hi, f"manifest: {what} must be an integer in [{lo}, {hi}], not {reprlib.repr(value)}")
    return value


def _finite(value: Any) -> bool:
    """A JSON number that is neither NaN nor infinite (nor an integer too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _positive(value: Any, what: str) -> float:
    _check(_finite(value) and 0 < value <= F32_MAX, f"manifest: {what} must be a finite positive number, not {reprlib.repr(value)}")
    return value


def _fits(kind: str, v: Any) -> bool:
    """Whether `v` packs into a uniform of `kind` (what `gpu.Call.set` will do with it)."""
    if kind == "f32":
        return _finite(v) and abs(v) <= F32_MAX
    lo, hi = (-(1 << 31), 1 << 31) if kind == "i32" else (0, 1 << 32)
    return _is_int(v) and lo <= v < hi


@dataclass
class Manifest:
    data: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.data["config"]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    @functools.cached_property
    def files(self) -> dict[str, dict[str, Any]]:
        """Every file the package holds besides the manifest: path -> {file, bytes, sha256}."""
        return {e["file"]: e for e in _file_entries(self.data)}


def _file_entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The references to files in a parsed manifest, each as {file, bytes, sha256}."""
    return [{k: e[k] for k in ("file", "bytes", "sha256")}
            for e in (data["tokenizer"], *data["shards"], *data["kernels"].values())]


def parse_json(text: bytes | str, what: str) -> Any:
    """json.loads with every failure (syntax, bad UTF-8, nesting too deep for the parser) a PackageError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise PackageError(f"{what}: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PackageError(f"{what} is not JSON ({exc})") from None


def parse_manifest(text: bytes | str) -> Manifest:
    data = parse_json(text, "manifest.json")
    _check(isinstance(data, dict), "manifest.json is not an object")
    _check_version(data)
    _check_header(data)
    cfg = _check_config(data.get("config"))
    _check_rope(data.get("rope"), cfg)
    eos = data.get("eos_ids")
    _check(isinstance(eos, list) and len(eos) <= 64 and all(_is_int(i) and 0 <= i < cfg["n_vocab"] for i in eos),
           "manifest: eos_ids must be a list of token ids below n_vocab")
    _file_entry(data.get("tokenizer"), "tokenizer", TOKENIZER_MAX_BYTES, _TOKENIZER)
    shards = data.get("shards")
    _check(isinstance(shards, list) and 0 < len(shards) <= 10000, "manifest: shards must be a non-empty list")
    for i, s in enumerate(shards):
        _file_entry(s, f"shard {i}", MAX_BYTES)
    _check_tensors(data.get("tensors"), shards)
    _check_kernels(data.get("kernels"))
    _check_files(data)
    _check_buffers(data)
    _check_plans(data.get("plans"), data)
    return Manifest(data)


def _check_version(data: dict[str, Any]) -> None:
    fmt, version = data.get("format"), data.get("version")
    if fmt == FORMAT and _is_int(version) and version < VERSION:
        raise PackageError(f"package format version {version} is older than this runtime reads (version {VERSION}); "
                           "compile the model again with this lutlm (`lutlm compile`)")
    _check(fmt == FORMAT and version == VERSION,
           f"package format {reprlib.repr(fmt)} version {reprlib.repr(version)}; this runtime reads {FORMAT!r} version {VERSION}")


def _check_header(data: dict[str, Any]) -> None:
    """The fields that describe the package rather than the model."""
    _check(isinstance(data.get("name"), str) and bool(NAME.fullmatch(data["name"])),
           f"manifest: name must be 1 to 128 letters, digits, '_', '.' or '-', not {reprlib.repr(data.get('name'))}")
    _check(isinstance(data.get("source"), str) and bool(_SOURCE.fullmatch(data["source"])),
           "manifest: source must be the base name of the model it was compiled from")
    _check(isinstance(data.get("compiler"), str) and bool(_HEX64.fullmatch(data["compiler"])),
           "manifest: compiler must be a sha256")
    template = data.get("chat_template")
    _check(template is None or (isinstance(template, str) and len(template) <= TEMPLATE_MAX_CHARS),
           f"manifest: chat_template must be null or a string of at most {TEMPLATE_MAX_CHARS} characters")
    _check(isinstance(data.get("decode"), str) and bool(NAME.fullmatch(data["decode"])),
           f"manifest: decode must be a name, not {reprlib.repr(data.get('decode'))}")
    _check(isinstance(data.get("quantization"), dict), "manifest: quantization must be an object")
    _int(data.get("chunk"), "chunk", 1, 4096)
    _int(data.get("max_ctx"), "max_ctx", 1, 1 << 21)


def _check_config(cfg: Any) -> dict[str, Any]:
    _check(isinstance(cfg, dict), "manifest: config must be an object")
    _check(cfg.get("architecture") == "llama", f"manifest: config.architecture {reprlib.repr(cfg.get('architecture'))} "
                                               "is not one this runtime runs (llama)")
    for key, hi in CONFIG_BOUNDS.items():
        _int(cfg.get(key), f"config.{key}", 1, hi)
    for key in ("rope_theta", "rms_eps"):
        _positive(cfg.get(key), f"config.{key}")
    for key in ("tied_embeddings", "add_bos"):
        _check(isinstance(cfg.get(key), bool), f"manifest: config.{key} must be true or false, not {reprlib.repr(cfg.get(key))}")
    for key in ("bos_id", "eos_id"):
        _check(cfg.get(key) is None or (_is_int(cfg[key]) and 0 <= cfg[key] < cfg["n_vocab"]),
               f"manifest: config.{key} must be null or a token id below n_vocab, not {reprlib.repr(cfg.get(key))}")
    _check(cfg["n_head"] % cfg["n_head_kv"] == 0, "manifest: n_head must be a multiple of n_head_kv")
    _check(cfg["n_rot"] % 2 == 0 and cfg["n_rot"] <= cfg["head_dim"], "manifest: config.n_rot must be even and at most head_dim")
    return cfg


def _check_rope(rope: Any, cfg: dict[str, Any]) -> None:
    _check(isinstance(rope, dict), "manifest: rope must be an object")
    _positive(rope.get("theta"), "rope.theta")
    _check(_is_int(rope.get("pairs")) and rope["pairs"] == cfg["n_rot"] // 2,
           f"manifest: rope.pairs must be config.n_rot / 2 = {cfg['n_rot'] // 2}, not {reprlib.repr(rope.get('pairs'))}")


def _file_entry(entry: Any, what: str, max_bytes: int, path: re.Pattern[str] = _PATH) -> None:
    """A reference to a file of the package: {file, bytes, sha256}."""
    _check(isinstance(entry, dict) and isinstance(entry.get("file"), str) and bool(path.fullmatch(entry["file"])),
           f"manifest: {what} has no valid file name")
    _int(entry.get("bytes"), f"{what} bytes", 0, max_bytes)
    _check(isinstance(entry.get("sha256"), str) and bool(_HEX64.fullmatch(entry["sha256"])), f"manifest: {what} sha256")


def _check_files(data: dict[str, Any]) -> None:
    """A file named twice is described the same way each time."""
    seen: dict[str, dict[str, Any]] = {}
    for e in _file_entries(data):
        _check(seen.setdefault(e["file"], e) == e, f"manifest: {e['file']} is listed twice with different bytes or sha256")


def _check_tensors(tensors: Any, shards: list[dict[str, Any]]) -> None:
    _check(isinstance(tensors, dict) and tensors, "manifest: tensors missing")
    for name, t in tensors.items():
        _check(bool(NAME.fullmatch(name)) and isinstance(t, dict), f"manifest: bad tensor entry {reprlib.repr(name)}")
        shard = _int(t.get("shard"), f"tensor {name} shard", 0, len(shards) - 1)
        offset, size = _int(t.get("offset"), f"tensor {name} offset"), _int(t.get("bytes"), f"tensor {name} bytes", 4)
        _check(offset + size <= shards[shard]["bytes"], f"manifest: tensor {name} runs past the end of its shard")
        _check(t.get("dtype") in _DTYPES, f"manifest: tensor {name} dtype {reprlib.repr(t.get('dtype'))}")
        shape = t.get("shape")
        _check(isinstance(shape, list) and 0 < len(shape) <= 8 and all(_is_int(d) and 0 < d <= MAX_BYTES for d in shape),
               f"manifest: tensor {name} shape must be a list of positive integers")


def _check_kernels(kernels: Any) -> None:
    _check(isinstance(kernels, dict) and 0 < len(kernels) <= 1024, "manifest: kernels missing")
    for kid, k in kernels.items():
        _check(bool(NAME.fullmatch(kid)) and isinstance(k, dict), f"manifest: bad kernel entry {reprlib.repr(kid)}")
        _file_entry(k, f"kernel {kid}", KERNEL_MAX_BYTES)
        _check(isinstance(k.get("entry"), str) and bool(NAME.fullmatch(k["entry"])), f"manifest: kernel {kid} entry")
        b = k.get("bindings")
        _check(isinstance(b, list) and 0 < len(b) <= 16 and all(
            isinstance(x, dict) and isinstance(x.get("name"), str) and x.get("access") in ("read", "read_write")
            and x.get("dtype") in _BINDING_DTYPES for x in b), f"manifest: kernel {kid} bindings")
        u = k.get("uniforms")
        _check(isinstance(u, list) and len(u) <= 32 and all(
            isinstance(x, list) and len(x) == 2 and isinstance(x[0], str) and x[1] in _TYPES for x in u),
            f"manifest: kernel {kid} uniforms")
        wg = k.get("workgroup")
        _check(isinstance(wg, list) and len(wg) == 3 and all(_is_int(v) and 1 <= v <= 1024 for v in wg)
               and wg[0] * wg[1] * wg[2] <= 1024, f"manifest: kernel {kid} workgroup")
        g = k.get("grid")
        _check(isinstance(g, list) and len(g) == 3 and all(isinstance(e, str) and len(e) <= 1000 for e in g),
               f"manifest: kernel {kid} grid")
        _evaluates(g, {f: 1 for f, _ in u}, f"kernel {kid} grid")  # parses, and names only the kernel's own uniforms
        features = k.get("features", [])
        _check(isinstance(features, list) and len(features) <= 8 and all(isinstance(f, str) and NAME.fullmatch(f)
                                                                          for f in features),
               f"manifest: kernel {kid} features")
        if "cpu" in k:
            _check_cpu(k["cpu"], kid)
    for kid, k in kernels.items():
        if "fallback" in k:
            _check_fallback(kernels, kid)


def _check_cpu(cpu: Any, kid: str) -> None:
    """A kernel's CPU op: its name and at most 16 named parameters, each an integer in 0..2^24
    (sizes, bit widths, flags). Whether the CPU backend knows the op is its own check at load."""
    _check(isinstance(cpu, dict) and len(cpu) <= 17 and isinstance(cpu.get("op"), str) and bool(NAME.fullmatch(cpu["op"]))
           and all(isinstance(name, str) and NAME.fullmatch(name) and _is_int(v) and 0 <= v <= 1 << 24
                   for name, v in cpu.items() if name != "op"),
           f"manifest: kernel {kid} cpu must be {{\"op\": NAME, PARAMETER: integer in 0..2^24, ...}}")


def _check_fallback(kernels: dict[str, Any], kid: str) -> None:
    """A fallback stands in for its kernel: same bindings and uniforms, no features."""
    k = kernels[kid]
    fb = kernels.get(k["fallback"]) if isinstance(k["fallback"], str) else None
    _check(fb is not None and not fb.get("features") and "fallback" not in fb
           and [(b["name"], b["access"], b["dtype"]) for b in fb["bindings"]]
           == [(b["name"], b["access"], b["dtype"]) for b in k["bindings"]] and fb["uniforms"] == k["uniforms"],
           f"manifest: kernel {kid} fallback {reprlib.repr(k['fallback'])} is not a kernel with the same bindings and "
           "uniforms that needs no adapter feature")


def _evaluates(exprs: list[str], names: dict[str, Any], what: str) -> list[int]:
    try:
        return [evaluate(e, names) for e in exprs]
    except ExprError as exc:
        raise PackageError(f"manifest: {what}: {exc}") from None


def _check_buffers(data: dict[str, Any]) -> None:
    """Size expressions of ctx and chunk that give a positive size from one token to the model's context."""
    buffers = data.get("buffers")
    _check(isinstance(buffers, dict) and len(buffers) <= 4096 and all(
        bool(NAME.fullmatch(n)) and isinstance(e, str) for n, e in buffers.items()),
        "manifest: buffers must map names to size expressions")
    _check(not set(buffers) & set(data["tensors"]), "manifest: a buffer has the name of a tensor")
    _check("ids" in buffers and "rope" in buffers, "manifest: buffers ids and rope are required")
    for ctx in (1, data["max_ctx"]):
        for name, expr in buffers.items():
            size, = _evaluates([expr], {"ctx": ctx, "chunk": data["chunk"]}, f"buffer {name}")
            _check(0 < size <= MAX_BYTES, f"manifest: buffer {name} needs {size} bytes at context {ctx} "
                                          f"(a buffer has 1 to {MAX_BYTES})")
            _check_least(data, name, size, ctx)


def _check_plans(plans: Any, data: dict[str, Any]) -> None:
    _check(isinstance(plans, dict) and all(p in plans for p in _PLANS) and len(plans) <= 64,
           f"manifest: plans {', '.join(_PLANS)} are required")
    _check(all(isinstance(steps, list) and len(steps) <= MAX_PLAN_STEPS for steps in plans.values()),
           f"manifest: each plan must be a list of at most {MAX_PLAN_STEPS} steps")
    _check(sum(map(len, plans.values())) <= MAX_STEPS, f"manifest: the plans have more than {MAX_STEPS} steps in all")
    for pname, buffer in (("penalty", "seen"), ("score", "targets"), ("score", "nll")):  # the engine writes or reads them
        _check(pname not in plans or buffer in data["buffers"], f"manifest: plan {pname} needs a buffer {buffer}")
    for pname, steps in plans.items():
        _check(bool(NAME.fullmatch(pname)), f"manifest: bad plan name {reprlib.repr(pname)}")
        for i, st in enumerate(steps):
            _check_step(st, f"plan {pname} step {i}", data)


def _check_step(st: Any, where: str, data: dict[str, Any]) -> None:
    """The step binds its kernel's buffers, and its sizes pack into the kernel's uniforms and give a grid
    for the values the engine supplies (all at 1, all at the model's context)."""
    kernels, buffers, tensors = data["kernels"], data["buffers"], data["tensors"]
    _check(isinstance(st, dict) and isinstance(st.get("kernel"), str) and st["kernel"] in kernels,
           f"manifest: {where} names no known kernel")
    k = kernels[st["kernel"]]
    bind = st.get("bind")
    _check(isinstance(bind, list) and len(bind) == len(k["bindings"]) and all(
        isinstance(n, str) and (n in buffers or n in tensors) for n in bind),
        f"manifest: {where} binds unknown buffers or the wrong number of them")
    sizes = st.get("sizes")
    kinds = {f: kind for f, kind in k["uniforms"] if f != "packGridDimX"}
    _check(isinstance(sizes, dict) and set(sizes) == set(kinds), f"manifest: {where} sizes must give exactly {sorted(kinds)}")
    for n in (1, data["max_ctx"]):
        names = {name: kind(n) for name, kind in VARIABLES.items()}
        try:
            values = {f: value(v, names) if isinstance(v, str) else v for f, v in sizes.items()}
        except ExprError as exc:
            raise PackageError(f"manifest: {where} sizes: {exc}") from None
        bad = sorted(f for f, v in values.items() if not _fits(kinds[f], v))
        _check(not bad, f"manifest: {where} sizes {', '.join(bad)} do not fit their uniform types")
        _evaluates(k["grid"], values, f"{where} grid")


def buffer_sizes(manifest: Manifest, ctx: int, max_binding: int) -> dict[str, int]:
    """Byte size of every activation buffer for a context of `ctx` tokens, bounded by the adapter and
    no smaller than what the engine writes into it."""
    sizes = {}
    for name, expr in manifest["buffers"].items():
        size, = _evaluates([expr], {"ctx": ctx, "chunk": manifest["chunk"]}, f"buffer {name}")
        _check(0 < size <= max_binding, f"buffer {name} needs {size} bytes at context {ctx}; "
                                        f"the adapter binds at most {max_binding}")
        _check_least(manifest.data, name, size, ctx)
        sizes[name] = size
    return sizes


def _check_least(data: dict[str, Any], name: str, size: int, ctx: int) -> None:
    """A buffer the engine itself writes holds what it writes there at context `ctx`."""
    chunk = data["chunk"]
    least = {"ids": 4 * chunk, "targets": 4 * chunk, "nll": 4 * chunk, "seen": 4 * ctx,
             "rope": 8 * ctx * data["rope"]["pairs"]}.get(name, 0)
    _check(size >= least, f"manifest: buffer {name} has {size} bytes at context {ctx}; the engine writes {least}")


def folder_reader(folder: str) -> Reader:
    """A `Reader` of a package folder on disk that reads only regular files inside the folder (a
    symlink may point elsewhere in it, never out) and compares each file's size with what the
    manifest says before reading a byte of it: a link to /dev/zero, a named pipe or a sparse file of
    gigabytes is refused at once, without saying what lies outside."""
    root = os.path.realpath(folder)

    def read(rel: str, size: int | None) -> bytes:
        path = os.path.realpath(os.path.join(root, rel))
        refused = PackageError(f"{rel}: not a regular file inside the package")
        if os.path.commonpath([root, path]) != root:
            raise refused
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise refused
        _check_size(rel, st.st_size, size)
        # O_NONBLOCK: should a pipe replace the file after the stat, opening it does not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(now.st_mode):
                raise refused
            _check_size(rel, now.st_size, size)
            data = f.read(MANIFEST_MAX_BYTES + 1 if size is None else size + 1)
        _check_size(rel, len(data), size)
        return data

    return read


def _check_size(path: str, got: int, want: int | None) -> None:
    if want is None:
        _check(got <= MANIFEST_MAX_BYTES, f"{path}: larger than {MANIFEST_MAX_BYTES >> 20} MiB")
    else:
        _check(got == want, f"{path}: {got} bytes, the manifest says {want} (truncated or replaced)")


def _read(read: Reader, path: str, size: int | None) -> bytes:
    try:
        return read(path, size)
    except OSError as exc:
        raise PackageError(f"{path}: cannot read ({exc.strerror or exc})") from None


def read_manifest(read: Reader) -> Manifest:
    return parse_manifest(_read(read, "manifest.json", None))


def read_file(manifest: Manifest, read: Reader, path: str) -> bytes:
    """A file of the package, refused unless it has the bytes and sha256 the manifest gives it."""
    entry = manifest.files[path]
    data = _read(read, path, entry["bytes"])
    _check_size(path, len(data), entry["bytes"])
    _check(hashlib.sha256(data).hexdigest() == entry["sha256"], f"{path}: sha256 mismatch (the file changed or is damaged)")
    return data


def read_text(manifest: Manifest, read: Reader, path: str) -> str:
    try:
        return read_file(manifest, read, path).decode("utf-8")
    except UnicodeDecodeError:
        raise PackageError(f"{path}: not UTF-8 text") from None


def read_tokenizer(manifest: Manifest, read: Reader) -> Tokenizer:
    """The package's tokenizer, whose ids must be ids of the model's vocabulary."""
    try:
        tokenizer = Tokenizer(parse_json(read_file(manifest, read, "tokenizer.json"), "tokenizer.json"))
    except TokenizerError as exc:
        raise PackageError(f"tokenizer.json: {exc}") from None
    _check(tokenizer.vocab_size <= manifest.config["n_vocab"],
           f"tokenizer.json has token ids up to {tokenizer.vocab_size - 1}; the model's vocabulary has "
           f"{manifest.config['n_vocab']}")
    return tokenizer


def load_tensors(manifest: Manifest, read: Reader) -> dict[str, memoryview]:
    """Every tensor's bytes, each shard read once and verified first."""
    out: dict[str, memoryview] = {}
    by_shard: dict[int, list[str]] = {}
    for name, t in manifest["tensors"].items():
        by_shard.setdefault(t["shard"], []).append(name)
    for index, names in sorted(by_shard.items()):
        data = memoryview(read_file(manifest, read, manifest["shards"][index]["file"]))
        for name in names:
            t = manifest["tensors"][name]
            out[name] = data[t["offset"]: t["offset"] + t["bytes"]]
    return out

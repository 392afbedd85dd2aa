"""Hostile model packages: damaged and rewritten files, every manifest field given values a careless
tool or an attacker would, malformed tokenizer structures, symlinks out of the package, named pipes
and sparse files where files belong. Each runs `lutlm generate` as its own process under a memory
and a time limit (tests/hostile.py) and must end in one `lutlm: error:` line, exit status 2, that
says why (and reveals nothing outside the package); the unmodified package must still generate.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any, Callable

import pytest

import hostile
from engine_fixtures import compile_package, tiny_checkpoint
from lutlm.errors import LutlmError
from runtime_py.package import VARIABLES, PackageError, folder_reader

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

Edit = Callable[[Path], None]
KERNEL = "argmax"  # a kernel the greedy plan binds on every adapter (no feature, no fallback)
DELETE = object()
DEEP = "[" * 100_000 + "]" * 100_000


# -- ways to damage a package ---------------------------------------------------------------------
def _manifest(pkg: Path) -> dict[str, Any]:
    return json.loads((pkg / "manifest.json").read_text())


def _save(pkg: Path, manifest: dict[str, Any]) -> None:
    (pkg / "manifest.json").write_text(json.dumps(manifest))


def _set(node: Any, path: str, value: Any) -> None:
    """Set (or with DELETE remove) the field at a path such as `plans/decode/0/sizes`."""
    *parents, last = path.split("/")
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key = int(last) if isinstance(node, list) else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value


def change(fn: Callable[[dict[str, Any]], None]) -> Edit:
    def edit(pkg: Path) -> None:
        m = _manifest(pkg)
        fn(m)
        _save(pkg, m)
    return edit


def put(path: str, value: Any) -> Edit:
    return change(lambda m: _set(m, path, value))


def substitute(old: str, new: str) -> Edit:
    """Edit the manifest's text (for what json.dumps cannot write, such as 1e400)."""
    def edit(pkg: Path) -> None:
        text = (pkg / "manifest.json").read_text()
        assert old in text
        (pkg / "manifest.json").write_text(text.replace(old, new))
    return edit


def raw_manifest(text: str | bytes) -> Edit:
    return lambda pkg: (pkg / "manifest.json").write_bytes(text if isinstance(text, bytes) else text.encode())


def rewrite(rel: str, fn: Callable[[bytes], bytes], rehash: bool = False) -> Edit:
    """Replace a file's content; with `rehash` also its bytes and sha256 in the manifest (so that
    the content itself is what the runtime must refuse)."""
    def edit(pkg: Path) -> None:
        data = fn((pkg / rel).read_bytes())
        (pkg / rel).write_bytes(data)
        if rehash:
            m = _manifest(pkg)
            for entry in _file_entries(m):
                if entry["file"] == rel:
                    entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
            _save(pkg, m)
    return edit


def _file_entries(node: Any) -> list[dict[str, Any]]:
    """Every {file, ...} object in a manifest, wherever it sits."""
    if isinstance(node, dict):
        return ([node] if isinstance(node.get("file"), str) else []) + [e for v in node.values() for e in _file_entries(v)]
    if isinstance(node, list):
        return [e for v in node for e in _file_entries(v)]
    return []


def tokenizer(fn: Callable[[dict[str, Any]], Any]) -> Edit:
    """A tokenizer.json whose structure `fn` rewrites, with the manifest's hash to match."""
    def edit(pkg: Path) -> None:
        tok = json.loads((pkg / "tokenizer.json").read_text())
        tok = fn(tok) or tok
        rewrite("tokenizer.json", lambda _: json.dumps(tok).encode(), rehash=True)(pkg)
    return edit


def tok_set(path: str, value: Any) -> Edit:
    return tokenizer(lambda tok: _set(tok, path, value))


def replace(rel: str, make: Callable[[Path], None]) -> Edit:
    """Remove a file and put something else in its place."""
    def edit(pkg: Path) -> None:
        path = pkg / rel
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        make(path)
    return edit


def symlink(target: str) -> Callable[[Path], None]:
    return lambda p: p.symlink_to(target)


def sparse(size: int) -> Callable[[Path], None]:
    def make(p: Path) -> None:
        with open(p, "wb") as f:
            f.truncate(size)
    return make


def device(p: Path) -> None:
    os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers


def _many_steps(m: dict[str, Any]) -> None:
    m["plans"]["decode"] = m["plans"]["decode"][:1] * 100_000


def _many_plans(m: dict[str, Any]) -> None:
    m["plans"].update({f"extra{i}": m["plans"]["decode"][:1] * 4000 for i in range(5)})


def _tensor_named_like_buffer(m: dict[str, Any]) -> None:
    m["buffers"]["output_norm.weight"] = "4"


def _two_kernels_one_file(m: dict[str, Any]) -> None:
    other = next(k for k in m["kernels"] if k != KERNEL)
    m["kernels"][other]["file"] = m["kernels"][KERNEL]["file"]


SHARD, KFILE = "shards/000.bin", f"kernels/{KERNEL}.wgsl"
OUTSIDE = "not a regular file inside the package"

# (case id, edit, a fragment the error must contain)
CASES: list[tuple[str, Edit, str]] = [
    # files damaged or replaced
    ("shard truncated", rewrite(SHARD, lambda d: d[:-10]), f"{SHARD}: .* bytes, the manifest says"),
    ("shard extended", rewrite(SHARD, lambda d: d + b"\0" * 4), f"{SHARD}: .* bytes, the manifest says"),
    ("shard bit flip", rewrite(SHARD, lambda d: d[:100] + bytes([d[100] ^ 1]) + d[101:]), f"{SHARD}: sha256 mismatch"),
    ("shard missing", lambda pkg: (pkg / SHARD).unlink(), f"{SHARD}: cannot read"),
    ("kernel rewritten, same size", rewrite(KFILE, lambda d: d.replace(b"fn ", b"fn\t", 1)), f"{KFILE}: sha256 mismatch"),
    ("kernel rewritten, other size", rewrite(KFILE, lambda d: d + b"// more\n"), f"{KFILE}: .* bytes, the manifest says"),
    ("kernel missing", lambda pkg: (pkg / KFILE).unlink(), f"{KFILE}: cannot read"),
    ("kernel not UTF-8", rewrite(KFILE, lambda d: b"\xff\xfe" + d, rehash=True), f"{KFILE}: not UTF-8"),
    ("kernel does not compile", rewrite(KFILE, lambda d: d.replace(b"fn ", b"fn (", 1), rehash=True),
     f"kernel {KERNEL}: Shader .* parsing error"),
    ("kernel entry point missing", put(f"kernels/{KERNEL}/entry", "nope"), f"kernel {KERNEL}: .*entry point"),
    ("tokenizer rewritten, same size", rewrite("tokenizer.json", lambda d: d.replace(b'"a"', b'"q"', 1)),
     "tokenizer.json: sha256 mismatch"),
    ("tokenizer rewritten, other size", rewrite("tokenizer.json", lambda d: d + b" "), "tokenizer.json: .* bytes"),
    ("tokenizer missing", lambda pkg: (pkg / "tokenizer.json").unlink(), "tokenizer.json: cannot read"),
    # the manifest as a whole
    ("manifest not JSON", raw_manifest('{"format": '), "manifest.json is not JSON"),
    ("manifest empty", raw_manifest(""), "manifest.json is not JSON"),
    ("manifest a list", raw_manifest("[]"), "manifest.json is not an object"),
    ("manifest not UTF-8", raw_manifest(b'{"format": "\xff"}'), "manifest.json is not JSON"),
    ("manifest nested 100000 deep", raw_manifest(DEEP), "manifest.json: JSON nested too deeply"),
    ("manifest field nested 100000 deep", raw_manifest('{"format": "lutlm-package", "config": ' + DEEP + "}"),
     "nested too deeply"),
    ("manifest 100 MiB", replace("manifest.json", sparse(100 << 20)), "manifest.json: larger than 64 MiB"),
    ("version 1", put("version", 1), "version 1 is older than this runtime reads .* compile the model again"),
    ("version 3", put("version", 3), "version 3; this runtime reads"),
    ("version as text", put("version", "2"), "version '2'; this runtime reads"),
    ("format other", put("format", "gguf"), "package format 'gguf'"),
    # fields describing the package
    ("name missing", put("name", DELETE), "manifest: name"),
    ("name a path", put("name", "../../etc"), "manifest: name"),
    ("name a number", put("name", 5), "manifest: name"),
    ("source an absolute path", put("source", "/home/someone/models/x.gguf"), "manifest: source"),
    ("source a list", put("source", ["x"]), "manifest: source"),
    ("compiler not a digest", put("compiler", "x"), "manifest: compiler"),
    ("chat_template a number", put("chat_template", 5), "manifest: chat_template"),
    ("chat_template 2M characters", put("chat_template", "x" * (2 << 20)), "manifest: chat_template"),
    ("chat_template broken", put("chat_template", "{% for %}"), "template"),
    ("decode a list", put("decode", ["lut"]), "manifest: decode"),
    ("quantization text", put("quantization", "q4"), "manifest: quantization"),
    ("chunk 0", put("chunk", 0), "manifest: chunk"),
    ("chunk a float", put("chunk", 64.0), "manifest: chunk"),
    ("chunk true", put("chunk", True), "manifest: chunk"),
    ("max_ctx negative", put("max_ctx", -1), "manifest: max_ctx"),
    ("max_ctx 2^40", put("max_ctx", 1 << 40), "manifest: max_ctx"),
    ("eos_ids text", put("eos_ids", "2"), "manifest: eos_ids"),
    ("eos_ids outside the vocabulary", put("eos_ids", [10**9]), "manifest: eos_ids"),
    # the model's config
    ("config missing", put("config", DELETE), "manifest: config"),
    ("config a list", put("config", []), "manifest: config"),
    ("architecture other", put("config/architecture", "gpt2"), "config.architecture"),
    ("n_layer 10^9", put("config/n_layer", 10**9), "config.n_layer"),
    ("n_embd 64.7", put("config/n_embd", 64.7), "config.n_embd"),
    ("n_head text", put("config/n_head", "4"), "config.n_head"),
    ("n_vocab true", put("config/n_vocab", True), "config.n_vocab"),
    ("n_ctx negative", put("config/n_ctx", -5), "config.n_ctx"),
    ("n_head_kv not dividing", put("config/n_head_kv", 3), "multiple of n_head_kv"),
    ("n_rot odd", put("config/n_rot", 15), "config.n_rot"),
    ("rms_eps NaN", put("config/rms_eps", float("nan")), "config.rms_eps"),
    ("rms_eps negative", put("config/rms_eps", -1e-5), "config.rms_eps"),
    ("rms_eps infinite", put("config/rms_eps", float("inf")), "config.rms_eps"),
    ("rope_theta NaN", put("config/rope_theta", float("nan")), "config.rope_theta"),
    ("rope_theta infinite", put("config/rope_theta", float("inf")), "config.rope_theta"),
    ("rope_theta 1e400", substitute('"rope_theta": 10000.0', '"rope_theta": 1e400'), "config.rope_theta"),
    ("tied_embeddings 1", put("config/tied_embeddings", 1), "config.tied_embeddings"),
    ("add_bos text", put("config/add_bos", "yes"), "config.add_bos"),
    ("bos_id negative", put("config/bos_id", -1), "config.bos_id"),
    ("eos_id outside the vocabulary", put("config/eos_id", 10**6), "config.eos_id"),
    ("eos_id true", put("config/eos_id", True), "config.eos_id"),
    # rope
    ("rope missing", put("rope", DELETE), "manifest: rope"),
    ("rope pairs 10^7", put("rope/pairs", 10_000_000), "rope.pairs"),
    ("rope pairs a float", put("rope/pairs", 8.0), "rope.pairs"),
    ("rope theta NaN", put("rope/theta", float("nan")), "rope.theta"),
    ("rope theta negative", put("rope/theta", -10000.0), "rope.theta"),
    # files the manifest lists
    ("tokenizer entry missing", put("tokenizer", DELETE), "manifest: tokenizer"),
    ("tokenizer entry elsewhere", put("tokenizer/file", "../tokenizer.json"), "manifest: tokenizer"),
    ("tokenizer sha256 wrong", put("tokenizer/sha256", "0" * 64), "tokenizer.json: sha256 mismatch"),
    ("tokenizer bytes 2^40", put("tokenizer/bytes", 1 << 40), "manifest: tokenizer bytes"),
    ("shards empty", put("shards", []), "manifest: shards"),
    ("shard path escapes", put("shards/0/file", "../../etc/passwd"), "manifest: shard 0"),
    ("shard path the folder", put("shards/0/file", "shards/.."), "manifest: shard 0"),
    ("shard bytes text", put("shards/0/bytes", "1"), "manifest: shard 0 bytes"),
    ("shard sha256 missing", put("shards/0/sha256", DELETE), "manifest: shard 0 sha256"),
    ("shard bytes larger", put("shards/0/bytes", 1 << 31), f"{SHARD}: .* bytes, the manifest says"),
    ("one file, two hashes", change(_two_kernels_one_file), "listed twice"),
    # tensors
    ("tensors empty", put("tensors", {}), "manifest: tensors"),
    ("tensor past its shard", put("tensors/output_norm.weight/offset", 10**9), "past the end of its shard"),
    ("tensor in no shard", put("tensors/output_norm.weight/shard", 5), "output_norm.weight shard"),
    ("tensor dtype f64", put("tensors/output_norm.weight/dtype", "f64"), "output_norm.weight dtype"),
    ("tensor shape text", put("tensors/output_norm.weight/shape", "64"), "output_norm.weight shape"),
    # kernels
    ("kernels missing", put("kernels", DELETE), "manifest: kernels"),
    ("kernel file escapes", put(f"kernels/{KERNEL}/file", "kernels/../../x.wgsl"), f"kernel {KERNEL} has no valid file"),
    ("kernel sha256 text", put(f"kernels/{KERNEL}/sha256", "abc"), f"kernel {KERNEL} sha256"),
    ("kernel entry code", put(f"kernels/{KERNEL}/entry", "main(){}"), f"kernel {KERNEL} entry"),
    ("kernel bindings none", put(f"kernels/{KERNEL}/bindings", []), f"kernel {KERNEL} bindings"),
    ("kernel uniform type f64", put(f"kernels/{KERNEL}/uniforms", [["n", "f64"]]), f"kernel {KERNEL} uniforms"),
    ("kernel workgroup 2048", put(f"kernels/{KERNEL}/workgroup", [2048, 1, 1]), f"kernel {KERNEL} workgroup"),
    ("kernel grid code", put(f"kernels/{KERNEL}/grid", ["__import__('os')", "1", "1"]), "grid: unexpected"),
    ("kernel grid unknown name", put(f"kernels/{KERNEL}/grid", ["secret", "1", "1"]), "unknown name 'secret'"),
    ("kernel features text", put(f"kernels/{KERNEL}/features", "subgroups"), f"kernel {KERNEL} features"),
    ("kernel fallback unknown", put(f"kernels/{KERNEL}/fallback", "nope"), "fallback 'nope' is not a kernel"),
    # buffers
    ("buffer ids missing", put("buffers/ids", DELETE), "buffers ids and rope are required"),
    ("buffer divides by zero", put("buffers/x", "ctx // 0"), "buffer x: division by zero"),
    ("buffer of 8 GB", put("buffers/logits", "4 * ctx * ctx * ctx * 1000"), "buffer logits needs"),
    ("buffer unknown name", put("buffers/x", "4 * pos"), "buffer x: unknown name 'pos'"),
    ("buffer named like a tensor", change(_tensor_named_like_buffer), "name of a tensor"),
    ("rope buffer too small", put("buffers/rope", "4"), "buffer rope has 4 bytes"),
    # plans
    ("plan decode missing", put("plans/decode", DELETE), "manifest: plans"),
    ("plan a string", put("plans/decode", "x"), "each plan must be a list"),
    ("plan of 100000 steps", change(_many_steps), "at most 4096 steps"),
    ("plans of 20000 steps", change(_many_plans), "more than 16384 steps in all"),
    ("step kernel unknown", put("plans/decode/0/kernel", "nope"), "names no known kernel"),
    ("step binds unknown", put("plans/decode/0/bind", ["nope"]), "binds unknown buffers"),
    ("step sizes missing", put("plans/decode/0/sizes", {}), "sizes must give exactly"),
    ("step size divides by zero", put("plans/greedy/0/sizes/n", "n // (m - 1)"), "division by zero"),
    ("step size unknown name", put("plans/greedy/0/sizes/n", "secret"), "unknown name 'secret'"),
    ("step size over i32", put("plans/greedy/0/sizes/n", 1 << 40), "do not fit their uniform types"),
    ("step size NaN", put("plans/greedy/0/sizes/n", float("nan")), "do not fit their uniform types"),
    ("step size a float for i32", put("plans/greedy/0/sizes/n", 1.5), "do not fit their uniform types"),
    ("step size float name for i32", put("plans/greedy/0/sizes/n", "temperature"), "do not fit their uniform types"),
    # tokenizer structures (the manifest's hash updated to match)
    ("tokenizer not JSON", rewrite("tokenizer.json", lambda d: d[:20], rehash=True), "tokenizer.json is not JSON"),
    ("tokenizer nested 100000 deep", rewrite("tokenizer.json", lambda d: DEEP.encode(), rehash=True), "nested too deeply"),
    ("tokenizer a list", tokenizer(lambda t: [t]), "tokenizer.json: the tokenizer must be an object"),
    ("tokenizer model text", tok_set("model", "BPE"), "tokenizer.json: model must be an object"),
    ("vocab a list", tok_set("model/vocab", ["a"]), "tokenizer.json: no BPE vocabulary"),
    ("vocab id negative", tok_set("model/vocab", {"a": -1}), "has id -1"),
    ("vocab id 10^12", tok_set("model/vocab", {"a": 10**12}), "has id 1000000000000"),
    ("vocab id text", tok_set("model/vocab", {"a": "1"}), "has id '1'"),
    ("merges text", tok_set("model/merges", "a b"), "merges must be a list"),
    ("merge a number", tok_set("model/merges", [5]), "malformed merge #0"),
    ("merge of unknown tokens", tok_set("model/merges", ["\u2603 \u2604"]), "malformed merge #0"),
    ("added_tokens text", tok_set("added_tokens", "x"), "added_tokens must be a list"),
    ("added token id 10^12", tok_set("added_tokens", [{"id": 10**12, "content": "<x>"}]), "added token #0"),
    ("added token empty", tok_set("added_tokens", [{"id": 5, "content": ""}]), "added token #0"),
    ("normalizer text", tok_set("normalizer", "NFC"), "normalizer 'NFC'"),
    ("pre_tokenizer text", tok_set("pre_tokenizer", "ByteLevel"), "pre_tokenizer must be an object"),
    ("pre_tokenizers text", tok_set("pre_tokenizer", {"type": "Sequence", "pretokenizers": "abc"}), "Sequence"),
    ("split regex broken", tok_set("pre_tokenizer", {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(("}, "behavior": "Isolated"}, {"type": "ByteLevel"}]}), "does not compile"),
    ("split regex unclosed property", tok_set("pre_tokenizer", {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\p{Lx"}, "behavior": "Isolated"}, {"type": "ByteLevel"}]}), "unclosed"),
    ("tokenizer ids past the model's", tokenizer(lambda t: t["added_tokens"].append(
        {"id": 400, "content": "<big>", "special": True})), "the model's vocabulary has 300"),
    # symlinks, pipes, devices and sparse files where files belong
    ("shard -> /dev/zero", replace(SHARD, symlink("/dev/zero")), f"{SHARD}: {OUTSIDE}"),
    ("kernel -> /dev/zero", replace(KFILE, symlink("/dev/zero")), f"{KFILE}: {OUTSIDE}"),
    ("kernel -> /etc/passwd", replace(KFILE, symlink("/etc/passwd")), f"{KFILE}: {OUTSIDE}"),
    ("tokenizer -> /etc/passwd", replace("tokenizer.json", symlink("/etc/passwd")), f"tokenizer.json: {OUTSIDE}"),
    ("manifest -> /dev/zero", replace("manifest.json", symlink("/dev/zero")), "error"),
    ("shards -> /", replace("shards", symlink("/")), f"{SHARD}: {OUTSIDE}"),
    ("tokenizer through rootfs -> /", lambda pkg: (
        (pkg / "rootfs").symlink_to("/"), replace("tokenizer.json", symlink("rootfs/etc/passwd"))(pkg)),
     f"tokenizer.json: {OUTSIDE}"),
    ("shard a named pipe", replace(SHARD, os.mkfifo), f"{SHARD}: {OUTSIDE}"),
    ("kernel a named pipe", replace(KFILE, os.mkfifo), f"{KFILE}: {OUTSIDE}"),
    ("tokenizer a named pipe", replace("tokenizer.json", os.mkfifo), f"tokenizer.json: {OUTSIDE}"),
    ("manifest a named pipe", replace("manifest.json", os.mkfifo), "error"),
    ("shard a folder", replace(SHARD, os.mkdir), f"{SHARD}: {OUTSIDE}"),
    ("shard sparse 6 GiB", replace(SHARD, sparse(6 << 30)), f"{SHARD}: 6442450944 bytes, the manifest says"),
    ("shard a device", replace(SHARD, device), f"{SHARD}: {OUTSIDE}"),
]


@pytest.fixture(scope="module")
def package(tiny_package, tmp_path_factory) -> Path:
    """A copy of the tiny package, with its cases' copies beside it."""
    pkg = tmp_path_factory.mktemp("fuzz-package") / "pkg"
    shutil.copytree(tiny_package, pkg)
    manifest = _manifest(pkg)
    assert manifest["plans"]["greedy"][0]["kernel"] == KERNEL and not manifest["kernels"][KERNEL].get("features")
    return pkg


PEAK_MIB, SECONDS = 1024, 20  # what a refusal may take (the forking interpreter itself holds ~120 MiB)


def verdict(result: hostile.Result, expect: str) -> str | None:
    """Why a case's run is not a clean refusal for the expected reason in bounded time and memory, or None."""
    why = result.one_line_error()
    if why:
        return why
    error = result.stderr.strip().splitlines()[-1]
    if not re.search(expect, error):
        return f"the wrong error: {error}"
    if result.peak_mib > PEAK_MIB or result.seconds > SECONDS:
        return f"{result.peak_mib} MiB, {result.seconds} s"
    if "root:x:0:0" in result.stderr:
        return "it shows what lies outside the package"
    return None


@pytest.fixture(scope="module")
def results(package) -> dict[str, hostile.Result | str]:
    """Each case's result (the control's under "control"), or why it could not be set up here; the
    summary goes to results/fuzz-package.json."""
    argv = ["generate", "PKG", "--prompt", "hi", "--max-tokens", "2"]
    runs, names, skipped = [], [], {}
    for i, (case_id, edit, _) in enumerate([("control", lambda pkg: None, ""), *CASES]):
        pkg = package.parent / f"case{i}"
        shutil.copytree(package, pkg, symlinks=True)
        try:
            edit(pkg)
        except PermissionError as exc:  # mknod needs a privilege containers often drop
            skipped[case_id] = f"cannot set up here: {exc}"
            continue
        runs.append(([str(pkg) if a == "PKG" else a for a in argv], str(package.parent)))
        names.append(case_id)
    done = dict(zip(names, hostile.run(runs)))
    expect = {case_id: fragment for case_id, _, fragment in CASES}
    print(hostile.report("package", [(name, r, verdict(r, expect[name])) for name, r in done.items() if name in expect]))
    return {**done, **skipped}


def test_unmodified_package_generates(results):
    control = results["control"]
    assert control.status == 0, control.stderr[-3000:]
    assert "2 generated" in control.stderr


@pytest.mark.parametrize("case_id, expect", [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_package(results, case_id, expect):
    result = results[case_id]
    if isinstance(result, str):
        pytest.skip(result)
    assert verdict(result, expect) is None, f"{verdict(result, expect)}\n{result.stderr[-3000:]}"


# -- the pieces, in process -------------------------------------------------------------------------
def test_folder_reader_stays_inside_and_checks_sizes_first(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "shards").mkdir(parents=True)
    (pkg / "shards" / "real.bin").write_bytes(b"abcd")
    (pkg / "shards" / "alias.bin").symlink_to("real.bin")  # a link that stays inside is fine
    (pkg / "shards" / "out.bin").symlink_to(tmp_path / "secret")
    (tmp_path / "secret").write_bytes(b"1234")
    os.mkfifo(pkg / "shards" / "pipe.bin")
    with open(pkg / "shards" / "huge.bin", "wb") as f:
        f.truncate(6 << 30)
    read = folder_reader(str(pkg))
    assert read("shards/alias.bin", 4) == b"abcd"
    for rel in ("shards/out.bin", "shards/pipe.bin", "shards"):
        with pytest.raises(PackageError, match=f"^{rel}: not a regular file inside the package$"):
            read(rel, 4)
    with pytest.raises(PackageError, match="huge.bin: 6442450944 bytes, the manifest says 4"):
        read("shards/huge.bin", 4)  # refused from its size: reading it would take 6 GiB
    (pkg / "manifest.json").symlink_to("shards/huge.bin")
    with pytest.raises(PackageError, match="manifest.json: larger than 64 MiB"):
        read("manifest.json", None)


def test_plan_variables_are_those_the_engine_binds():
    from runtime_py.engine import Engine, Sampling

    engine = Engine.__new__(Engine)  # _variables reads only the context
    engine.ctx = 8
    bound = engine._variables(1, 0, Sampling(), 0)
    assert {k: type(v) for k, v in bound.items()} == VARIABLES


def test_compile_refuses_what_the_runtime_would(tmp_path):
    """A source whose tokenizer the runtime cannot read compiles to nothing (was: exit 0, then a
    package that never loads)."""
    ckpt = tiny_checkpoint(tmp_path / "hf")
    ckpt.tokenizer["added_tokens"].append({"id": 7, "content": "", "special": True})
    with pytest.raises(LutlmError, match="the runtime would not load this package: tokenizer.json: added token"):
        compile_package(ckpt, tmp_path / "pkg")
    assert not (tmp_path / "pkg").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_folder_name_the_manifest_cannot_record_is_refused_before_any_work(tmp_path):
    """The package's name is its folder's, and the runtime reads 1-128 of [A-Za-z0-9_.-]: such an
    output is refused before the source is even read (was: after minutes of quantising)."""
    from lutlm import build
    from lutlm.quant.pipeline import Request

    with pytest.raises(LutlmError, match="folder's name"):
        build.compile_package(tmp_path / "my model", tmp_path / "no-such-model.gguf", Request(bits="4", method="rtn"))
    assert not (tmp_path / "my model").exists()


def test_an_untied_output_head_must_be_quantised(tmp_path):
    """A separate head missing from the quantised tensors is an error (was: the package silently
    used the embedding as its head)."""
    from lutlm.intake import load_checkpoint
    from lutlm.package import gpu_tensors
    from lutlm.quant.pipeline import Request, quantize
    from tiny_llama import CONFIG, write_hf_folder

    write_hf_folder(tmp_path / "hf", cfg={**CONFIG, "tie_word_embeddings": False})
    ckpt = load_checkpoint(tmp_path / "hf")
    quantized, _, _ = quantize(ckpt, Request(bits="4", method="rtn"), None)
    del quantized["output.weight"]
    with pytest.raises(LutlmError, match="not quantised: output.weight"):
        gpu_tensors(ckpt, quantized)


def test_package_records_no_machine_path(package):
    """Every file it holds is listed with its hash, and no absolute path is written anywhere."""
    manifest = _manifest(package)
    assert manifest["source"] == "hf"
    listed = {e["file"] for e in _file_entries(manifest)}
    held = {p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()} - {"manifest.json"}
    assert listed == held
    assert str(package.parent) not in (package / "manifest.json").read_text()

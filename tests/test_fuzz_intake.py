"""Hostile model files at intake: every damaged, foreign or absurd GGUF file, Hugging Face folder
and quantised checkpoint ends in one `lutlm: error:` line (exit 2) in bounded time and memory.

Every case mutates tests/tiny_llama.py's model: truncations, bit flips in every GGUF header field
and metadata value, absurd counts, wrong types and values for every config field, deep nesting,
non-object JSON, named pipes, /dev/zero, sparse 6 GiB files and damaged safetensors headers. Each
runs a real command line (tokenize, eval ppl, generate, quantize) through tests/hostile.py: all in
one batch of forks, then one test per case, so pytest counts them. A flip that may leave a valid
file (a metadata value, a key the reader does without) may also load, but never crash or hang.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

import hostile
from tiny_llama import CONFIG, write_gguf, write_hf_folder

pytestmark = pytest.mark.slow

SECONDS = 10.0  # a case slower than this fails (it is killed at twice this)
PEAK_MIB = 256  # peak resident memory of a case (pages it shares with the forking interpreter uncounted)
SPARSE = 6 << 30  # bytes of the sparse files: more than the memory limit if read
DEEP = 100_000  # nesting of the deep JSON cases
GENERIC = re.compile(r"lutlm: error: (unexpected \w+:|out of memory$|input nested too deeply$)", re.M)

COMMANDS: dict[str, list[str]] = {
    "tokenize": ["tokenize", "SRC", "../text.txt"],
    "ppl": ["eval", "ppl", "SRC", "--text", "../text.txt", "--windows", "1", "--window", "8"],
    "generate": ["generate", "SRC", "--prompt", "x", "--max-tokens", "1"],
    "quantize": ["quantize", "SRC", "--bits", "4", "--method", "rtn", "-o", "out"],
}
READS_TENSORS = ["ppl", "generate", "quantize"]  # tokenize reads the config, tokenizer and tensor shapes only
SOURCES = {"hf": "hf", "gguf": "model.gguf", "quantized": "q"}  # each case's copy, in its own folder

Mutation = Callable[[Path], None]  # edits the case's copy of the source in place


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # a key of SOURCES
    mutate: Mutation
    command: str
    reject: bool = True  # False: the damage may leave a valid file, so exit 0 is allowed too

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.name}:{self.command}"


# -- the GGUF format, written field by field so that every field can be damaged --------------------

STRING, ARRAY = 8, 9
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
U32, I32, F32, BOOL, U64 = 4, 5, 6, 7, 10
ALIGN = 32


@dataclass(frozen=True)
class Span:
    """Where one field of an encoded GGUF lies, and what kind of field it is."""

    label: str
    kind: str  # magic, version, count, length, type, key, value, name, n_dims, dim, offset
    start: int
    size: int
    tensor: str | None  # the tensor whose description holds it; None in the header and metadata


class _Encoder:
    def __init__(self) -> None:
        self.out = bytearray()
        self.spans: list[Span] = []
        self.tensor: str | None = None

    def put(self, label: str, kind: str, raw: bytes, record: bool = True) -> None:
        if record:
            self.spans.append(Span(label, kind, len(self.out), len(raw), self.tensor))
        self.out += raw

    def string(self, label: str, kind: str, text: str, record: bool = True) -> None:
        raw = text.encode()
        self.put(label + ".length", "length", struct.pack("<Q", len(raw)), record)
        self.put(label, kind, raw, record and bool(raw))

    def value(self, label: str, vtype: int, value: Any, record: bool = True) -> None:
        if vtype == STRING:
            self.string(label, "value", value, record)
        else:
            self.put(label, "value", struct.pack(_SCALAR[vtype], value), record)


@dataclass
class Gguf:
    """A GGUF file as editable parts: (key, types, value) metadata and (name, dims, type, data) tensors."""

    kvs: list[tuple[str, list[int], Any]]
    tensors: list[tuple[str, list[int], int, bytes]]
    version: int = 3

    @classmethod
    def parse(cls, path: Path) -> "Gguf":
        from gguf import GGUFReader

        reader = GGUFReader(path)
        kvs = [(f.name, [int(t) for t in f.types], f.contents()) for f in reader.fields.values()
               if not f.name.startswith("GGUF.")]
        tensors = [(t.name, [int(d) for d in t.shape], int(t.tensor_type), t.data.tobytes()) for t in reader.tensors]
        return cls(kvs, tensors)

    def encode(self, tensor_count: int | None = None, kv_count: int | None = None,
               offsets: dict[int, int] | None = None) -> tuple[bytes, list[Span]]:
        """The file's bytes, with the header counts and tensor offsets given (else the true ones)."""
        e = _Encoder()
        e.put("magic", "magic", b"GGUF")
        e.put("version", "version", struct.pack("<I", self.version))
        e.put("tensor_count", "count", struct.pack("<Q", len(self.tensors) if tensor_count is None else tensor_count))
        e.put("kv_count", "count", struct.pack("<Q", len(self.kvs) if kv_count is None else kv_count))
        for key, types, value in self.kvs:
            e.string(key + ".key", "key", key)
            e.put(key + ".type", "type", struct.pack("<I", types[0]))
            if types[0] != ARRAY:
                e.value(key + ".value", types[0], value)
                continue
            e.put(key + ".item_type", "type", struct.pack("<I", types[1]))
            e.put(key + ".count", "count", struct.pack("<Q", len(value)))
            for i, item in enumerate(value):
                e.value(key + ".item0", types[1], item, record=i == 0)
        data, position = bytearray(), 0
        for j, (name, dims, ggml_type, blob) in enumerate(self.tensors):
            e.tensor = name
            e.string(name + ".name", "name", name)
            e.put(name + ".n_dims", "n_dims", struct.pack("<I", len(dims)))
            for d, dim in enumerate(dims):
                e.put(f"{name}.dim{d}", "dim", struct.pack("<Q", dim))
            e.put(name + ".type", "type", struct.pack("<I", ggml_type))
            e.put(name + ".offset", "offset", struct.pack("<Q", (offsets or {}).get(j, position)))
            data += blob + bytes(-len(blob) % ALIGN)
            position += len(blob) + (-len(blob) % ALIGN)
        head = bytes(e.out) + bytes(-len(e.out) % ALIGN)
        return head + bytes(data), e.spans

    def with_kv(self, key: str, types: list[int] | None, value: Any = None) -> "Gguf":
        """A copy with metadata `key` set (appended if new), or removed when `types` is None."""
        kvs = [kv for kv in self.kvs if kv[0] != key]
        if types is not None:
            at = next((i for i, kv in enumerate(self.kvs) if kv[0] == key), len(self.kvs))
            kvs.insert(at, (key, types, value))
        return Gguf(kvs, self.tensors, self.version)

    def with_tensors(self, tensors: list[tuple[str, list[int], int, bytes]]) -> "Gguf":
        return Gguf(self.kvs, tensors, self.version)


# -- the tiny model, built once at collection (milliseconds) so that case names can name fields ----

@dataclass
class Tiny:
    hf: dict[str, bytes]  # file name -> bytes
    gguf: Gguf
    gguf_bytes: bytes
    spans: list[Span]  # where each field of gguf_bytes lies


def _tiny() -> Tiny:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "hf"
        weights = write_hf_folder(folder)
        (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": CONFIG["eos_token_id"]}))
        write_gguf(Path(tmp) / "m.gguf", weights, CONFIG, json.loads((folder / "tokenizer.json").read_text()))
        model = Gguf.parse(Path(tmp) / "m.gguf")
        data, spans = model.encode()
        return Tiny({p.name: p.read_bytes() for p in folder.iterdir()}, model, data, spans)


TINY = _tiny()


# -- mutations ----------------------------------------------------------------------------------

def _fresh(path: Path) -> Path:
    """`path` cleared of whatever stood there (the copy's file, or nothing)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    return path


def put(rel: str, data: bytes) -> Mutation:
    return lambda src: _fresh(src / rel).write_bytes(data)


def put_json(rel: str, value: Any) -> Mutation:
    return put(rel, json.dumps(value).encode())


def edit_json(rel: str, edit: Callable[[Any], Any]) -> Mutation:
    def mutate(src: Path) -> None:
        value = edit(json.loads((src / rel).read_text()))
        _fresh(src / rel).write_text(json.dumps(value))
    return mutate


REMOVE = object()


def set_key(rel: str, key: str, value: Any) -> Mutation:
    """`key` of a JSON object file set to `value` (removed if value is REMOVE)."""
    def edit(obj: dict) -> dict:
        obj = dict(obj)
        obj.pop(key, None)
        return obj if value is REMOVE else obj | {key: value}
    return edit_json(rel, edit)


def truncate(rel: str, keep: int) -> Mutation:
    return lambda src: os.truncate(src / rel, keep)


def flip(rel: str, offset: int, bit: int) -> Mutation:
    def mutate(src: Path) -> None:
        data = bytearray((src / rel).read_bytes())
        data[offset] ^= 1 << bit
        _fresh(src / rel).write_bytes(bytes(data))
    return mutate


def fifo(rel: str) -> Mutation:
    return lambda src: os.mkfifo(_fresh(src / rel))


def dev_zero(rel: str) -> Mutation:
    return lambda src: _fresh(src / rel).symlink_to("/dev/zero")


def self_link(rel: str) -> Mutation:
    return lambda src: _fresh(src / rel).symlink_to(src / rel)


def as_folder(rel: str) -> Mutation:
    return lambda src: _fresh(src / rel).mkdir()


def sparse(rel: str, keep_prefix: bool = False) -> Mutation:
    """A 6 GiB file of (mostly) zeros that takes no disk: the original bytes first, if kept."""
    def mutate(src: Path) -> None:
        prefix = (src / rel).read_bytes() if keep_prefix else b""
        with open(_fresh(src / rel), "wb") as f:
            f.write(prefix)
            f.truncate(SPARSE)
    return mutate


def deep(opening: str, closing: str, depth: int = DEEP) -> bytes:
    return (opening * depth + "1" + closing * depth).encode()


def with_raw_key(rel: str, key: str, raw: bytes) -> Mutation:
    """A JSON object file with `key` added as raw text (json.dumps cannot nest that deep)."""
    def mutate(src: Path) -> None:
        text = (src / rel).read_bytes().lstrip()
        _fresh(src / rel).write_bytes(b"{" + json.dumps(key).encode() + b": " + raw + b", " + text[1:])
    return mutate


# safetensors: an 8-byte header length, a JSON header, the data
def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join_safetensors(header: Any, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def edit_header(rel: str, edit: Callable[[dict], Any]) -> Mutation:
    def mutate(src: Path) -> None:
        header, body = _split_safetensors((src / rel).read_bytes())
        _fresh(src / rel).write_bytes(_join_safetensors(edit(header), body))
    return mutate


def header_length(rel: str, length: Callable[[int, int], int]) -> Mutation:
    """The header length field set to length(true length, file size), nothing else changed."""
    def mutate(src: Path) -> None:
        data = (src / rel).read_bytes()
        _fresh(src / rel).write_bytes(struct.pack("<Q", length(struct.unpack("<Q", data[:8])[0], len(data))) + data[8:])
    return mutate


def entry(name: str, **changes: Any) -> Callable[[dict], dict]:
    """A header edit: tensor `name`'s entry with `changes` (a value of REMOVE drops the key)."""
    def edit(header: dict) -> dict:
        info = {k: v for k, v in {**header[name], **changes}.items() if v is not REMOVE}
        return {**header, name: info}
    return edit


def replace_entry(name: str, value: Any) -> Callable[[dict], dict]:
    return lambda header: {**header, name: value}


def poison(rel: str, name: str, raw: bytes) -> Mutation:
    """Tensor `name` of a safetensors file with its first value's bytes replaced by `raw` (a NaN, say)."""
    def mutate(src: Path) -> None:
        data = bytearray((src / rel).read_bytes())
        header, _ = _split_safetensors(bytes(data))
        at = 8 + struct.unpack("<Q", data[:8])[0] + header[name]["data_offsets"][0]
        data[at : at + len(raw)] = raw
        _fresh(src / rel).write_bytes(bytes(data))
    return mutate


def copy_file(rel: str, to: str) -> Mutation:
    return lambda src: shutil.copyfile(src / rel, src / to)


# -- the cases ----------------------------------------------------------------------------------

def _cases_for(kind: str, named: list[tuple[str, Mutation]], commands: list[str] | None = None,
               reject: bool = True) -> list[Case]:
    """One case per mutation, the commands taken in turn so that each one meets every kind of damage."""
    turn = itertools.cycle(commands or list(COMMANDS))
    return [Case(name, kind, mutate, next(turn), reject) for name, mutate in named]


INT_FIELDS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size", "max_position_embeddings"]
REQUIRED = ["model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"]
NAN, INF = math.nan, math.inf


def _bad_ints(good: int) -> list[Any]:
    return [str(good), good + 0.5, float(good), True, [good], {}, -1, 0, 1 << 40, NAN]


def hf_config_cases() -> list[Case]:
    named: list[tuple[str, Mutation]] = []
    for key in INT_FIELDS:
        named += [(f"config.{key}={v!r}", set_key("config.json", key, v)) for v in _bad_ints(CONFIG[key])]
    for key, good in (("rope_theta", 1e4), ("rms_norm_eps", 1e-5)):
        named += [(f"config.{key}={v!r}", set_key("config.json", key, v))
                  for v in (str(good), True, [good], NAN, INF, -INF, -good, 0.0)]
    named += [(f"config.head_dim={v!r}", set_key("config.json", "head_dim", v)) for v in (0, 15, 32, 2048, "16", 16.5)]
    for key in ("bos_token_id", "eos_token_id"):
        named += [(f"config.{key}={v!r}", set_key("config.json", key, v))
                  for v in ("1", 1.5, True, -1, CONFIG["vocab_size"], 1 << 40, [1, "x"], [CONFIG["vocab_size"]])]
    named += [(f"config.{key}=missing", set_key("config.json", key, REMOVE)) for key in REQUIRED]
    named += [(f"config.{key}={v!r}", set_key("config.json", key, v)) for key, v in [
        ("model_type", 5), ("model_type", ["llama"]), ("model_type", "gpt2"), ("rms_norm_eps", 2.0),
        ("num_hidden_layers", 1 << 31), ("vocab_size", (1 << 21) + 1), ("num_attention_heads", 3),
        ("num_key_value_heads", 3), ("tie_word_embeddings", "yes"), ("tie_word_embeddings", 1),
        ("rope_scaling", {"type": "linear", "factor": 2.0}), ("attention_bias", True), ("mlp_bias", "no")]]
    named += [("config.hidden_size=5000-digits", put("config.json", b'{"hidden_size": 1' + b"0" * 5000 + b"}"))]
    return _cases_for("hf", named)


BAD_JSON: dict[str, Callable[[str], Mutation]] = {
    "list": lambda rel: put_json(rel, []), "number": lambda rel: put_json(rel, 5),
    "string": lambda rel: put_json(rel, "llama"), "null": lambda rel: put_json(rel, None),
    "empty": lambda rel: put(rel, b""), "not-utf8": lambda rel: put(rel, b'{"a": "\xff\xfe"}'),
    "bom": lambda rel: put(rel, b"\xef\xbb\xbf{}"), "cut": lambda rel: put(rel, b'{"model_type": "lla'),
    "deep-list": lambda rel: put(rel, deep("[", "]")), "deep-object": lambda rel: put(rel, deep('{"a":', "}")),
    "deep-inside": lambda rel: with_raw_key(rel, "extra", deep("[", "]", 5000)),
    "fifo": fifo, "dev-zero": dev_zero, "folder": as_folder, "self-link": self_link,
    "sparse-6GiB": sparse, "sparse-6GiB-after-json": lambda rel: sparse(rel, keep_prefix=True),
}  # what any JSON file of a model may be instead of a JSON object of a sane size


def json_file_cases(rel: str, which: tuple[str, ...] = tuple(BAD_JSON)) -> list[tuple[str, Mutation]]:
    return [(f"{rel}={name}", BAD_JSON[name](rel)) for name in which]


VOCAB = CONFIG["vocab_size"]


def _vocab_id(tok: dict, value: Any) -> dict:
    vocab = dict(tok["model"]["vocab"])
    vocab[next(iter(vocab))] = value
    return {**tok, "model": {**tok["model"], "vocab": vocab}}


def _model(tok: dict, **changes: Any) -> dict:
    return {**tok, "model": {**tok["model"], **changes}}


def tokenizer_cases() -> list[tuple[str, Mutation]]:
    edits: list[tuple[str, Callable[[dict], Any]]] = [
        ("model=missing", lambda t: {k: v for k, v in t.items() if k != "model"}),
        ("model='BPE'", lambda t: {**t, "model": "BPE"}),
        ("model.type=WordPiece", lambda t: _model(t, type="WordPiece")),
        ("vocab=list", lambda t: _model(t, vocab=list(t["model"]["vocab"]))),
        ("vocab=empty", lambda t: _model(t, vocab={})),
        *[(f"vocab-id={v!r}", lambda t, v=v: _vocab_id(t, v)) for v in ("5", -1, VOCAB, 10**12, 1.5, True, None)],
        ("merges='a b'", lambda t: _model(t, merges="a b")),
        ("merges=[1,2]", lambda t: _model(t, merges=[1, 2])),
        ("merges=['ab']", lambda t: _model(t, merges=["ab"])),
        ("merges=[['a']]", lambda t: _model(t, merges=[["a"]])),
        ("merges=[['a',1]]", lambda t: _model(t, merges=[["a", 1]])),
        ("unk_token=absent", lambda t: _model(t, unk_token="<never>")),
        ("added_tokens='x'", lambda t: {**t, "added_tokens": "x"}),
        ("added_tokens=[5]", lambda t: {**t, "added_tokens": [5]}),
        ("added-token-without-content", lambda t: {**t, "added_tokens": [{"id": 1}]}),
        *[(f"added-token-id={v!r}", lambda t, v=v: {**t, "added_tokens": [{"id": v, "content": "<x>"}]})
          for v in ("1", -1, VOCAB, 10**12, 2.0)],
        ("normalizer=NFC", lambda t: {**t, "normalizer": {"type": "NFC"}}),
        ("normalizer='x'", lambda t: {**t, "normalizer": "x"}),
        ("pre_tokenizer=null", lambda t: {**t, "pre_tokenizer": None}),
        ("pre_tokenizer=Bogus", lambda t: {**t, "pre_tokenizer": {"type": "Bogus"}}),
        ("pre_tokenizer='x'", lambda t: {**t, "pre_tokenizer": "x"}),
        ("pre_tokenizer=deep-sequence", lambda t: {**t, "pre_tokenizer": _deep_sequence(t["pre_tokenizer"], 100)}),
    ]
    return [(f"tokenizer.json:{name}", edit_json("tokenizer.json", edit)) for name, edit in edits]


def _deep_sequence(inner: dict, depth: int) -> dict:
    for _ in range(depth):
        inner = {"type": "Sequence", "pretokenizers": [inner]}
    return inner


def hf_file_cases() -> list[Case]:
    named = [*json_file_cases("config.json"), *json_file_cases("tokenizer.json"), *tokenizer_cases()]
    named += json_file_cases("tokenizer_config.json", ("list", "number", "fifo", "dev-zero", "deep-list", "sparse-6GiB"))
    named += json_file_cases("generation_config.json", ("string", "null", "folder", "deep-object", "self-link"))
    named += [(f"tokenizer_config.{k}={v!r}", set_key("tokenizer_config.json", k, v)) for k, v in [
        ("chat_template", 5), ("chat_template", [5]), ("chat_template", [{"name": "default", "template": 5}]),
        ("add_bos_token", "yes"), ("add_bos_token", 1)]]
    named += [(f"generation_config.eos_token_id={v!r}", set_key("generation_config.json", "eos_token_id", v))
              for v in ("x", 10**12, -1, VOCAB, [1, "x"], 2.5)]
    named += [("tokenizer.json=missing", lambda src: (src / "tokenizer.json").unlink())]
    return _cases_for("hf", named)


SHARD = "model.safetensors"
VICTIM = "model.layers.0.self_attn.q_proj.weight"  # (64, 64) f32
NEIGHBOUR = "model.layers.0.self_attn.o_proj.weight"  # the same size


def _offsets(header: dict, name: str) -> list[int]:
    return header[name]["data_offsets"]


def safetensors_cases(shard: str, victim: str, neighbour: str) -> list[tuple[str, Mutation]]:
    """Damage to one safetensors file's header: `victim` and `neighbour` are two tensors of one size."""
    edits: list[tuple[str, Callable[[dict], Any]]] = [
        ("header=list", lambda h: [h]), ("header=number", lambda h: 5), ("header=null", lambda h: None),
        ("entry=5", replace_entry(victim, 5)), ("entry=list", replace_entry(victim, [1])),
        ("dtype=missing", entry(victim, dtype=REMOVE)), ("dtype=F8", entry(victim, dtype="F8")),
        ("dtype=5", entry(victim, dtype=5)), ("dtype=I64-misfit", entry(victim, dtype="I64")),
        ("offsets=missing", entry(victim, data_offsets=REMOVE)),
        ("offsets=negative", lambda h: entry(victim, data_offsets=[-1, _offsets(h, victim)[1]])(h)),
        ("offsets=one", lambda h: entry(victim, data_offsets=_offsets(h, victim)[:1])(h)),
        ("offsets=three", lambda h: entry(victim, data_offsets=_offsets(h, victim) + [0])(h)),
        ("offsets=strings", lambda h: entry(victim, data_offsets=[str(x) for x in _offsets(h, victim)])(h)),
        ("offsets=floats", lambda h: entry(victim, data_offsets=[float(x) for x in _offsets(h, victim)])(h)),
        ("offsets=reversed", lambda h: entry(victim, data_offsets=_offsets(h, victim)[::-1])(h)),
        ("offsets=2^64", lambda h: entry(victim, data_offsets=[_offsets(h, victim)[0], 1 << 64])(h)),
        ("offsets=overlap", lambda h: entry(victim, data_offsets=_offsets(h, neighbour))(h)),
        ("offsets=past-end", lambda h: entry(victim, data_offsets=[x + (1 << 20) for x in _offsets(h, victim)])(h)),
        ("offsets=string", entry(victim, data_offsets="0-16")),
        ("shape=missing", entry(victim, shape=REMOVE)), ("shape='64'", entry(victim, shape="64")),
        ("shape=negative", lambda h: entry(victim, shape=[-d for d in h[victim]["shape"]])(h)),
        ("shape=floats", lambda h: entry(victim, shape=[float(d) for d in h[victim]["shape"]])(h)),
        ("shape=bools", lambda h: entry(victim, shape=[True for _ in h[victim]["shape"]])(h)),
        ("shape=zero-dim", lambda h: entry(victim, shape=[0, h[victim]["shape"][1]],
                                          data_offsets=[_offsets(h, victim)[0]] * 2)(h)),
        ("shape=2^62-squared", entry(victim, shape=[1 << 62, 1 << 62])),
        ("shape=2^64", entry(victim, shape=[1 << 64])),
        ("shape=extra-dim", lambda h: entry(victim, shape=h[victim]["shape"] + [1])(h)),
        ("shape=transposed-size", lambda h: entry(victim, shape=[h[victim]["shape"][0] * 2, h[victim]["shape"][1] // 2])(h)),
        ("metadata=5", lambda h: {**h, "__metadata__": 5}),
        ("metadata-value=5", lambda h: {**h, "__metadata__": {"format": 5}}),
        ("tensor=renamed", lambda h: {**{k: v for k, v in h.items() if k != victim}, victim + ".x": h[victim]}),
        ("tensor=removed", lambda h: {k: v for k, v in h.items() if k != victim}),
    ]
    named = [(f"{shard}:{name}", edit_header(shard, edit)) for name, edit in edits]
    named += [(f"{shard}:header-length={name}", header_length(shard, length)) for name, length in [
        ("0", lambda n, size: 0), ("2^63", lambda n, size: 1 << 63), ("2^64-1", lambda n, size: (1 << 64) - 1),
        ("+1", lambda n, size: n + 1), ("-1", lambda n, size: n - 1), ("file-size", lambda n, size: size)]]
    named += [(f"{shard}:duplicate-key", put_duplicate_key(shard, victim))]
    named += [(f"{shard}={name}", mutate) for name, mutate in [
        ("fifo", fifo(shard)), ("dev-zero", dev_zero(shard)), ("self-link", self_link(shard)),
        ("sparse-6GiB", sparse(shard)), ("sparse-6GiB-after-data", sparse(shard, keep_prefix=True)),
        ("empty", put(shard, b"")), ("7-bytes", put(shard, b"\x08" + bytes(6)))]]
    return named


def put_duplicate_key(rel: str, name: str) -> Mutation:
    """A header naming one tensor twice (json.loads would keep the last silently)."""
    def mutate(src: Path) -> None:
        header, body = _split_safetensors((src / rel).read_bytes())
        raw = json.dumps(header)
        twice = raw[:-1] + ", " + json.dumps(name) + ": " + json.dumps(header[name]) + "}"
        _fresh(src / rel).write_bytes(struct.pack("<Q", len(twice)) + twice.encode() + body)
    return mutate


def _truncations(size: int, marks: list[int], count: int = 16) -> list[int]:
    """Cut points: `count` spread over the file, each mark and its neighbours, never the whole file."""
    spread = {size * i // count for i in range(count)}
    near = {m + d for m in marks for d in (-1, 0, 1)}
    return sorted(k for k in spread | near if 0 <= k < size)


def hf_safetensors_cases() -> list[Case]:
    header_end = 8 + struct.unpack("<Q", TINY.hf[SHARD][:8])[0]
    named = safetensors_cases(SHARD, VICTIM, NEIGHBOUR)
    named += [("second-shard=duplicate-names", copy_file(SHARD, "model-00002.safetensors")),
              ("shard=folder", as_folder("extra.safetensors"))]
    named += [(f"{SHARD}:cut-at-{k}", truncate(SHARD, k))
              for k in _truncations(len(TINY.hf[SHARD]), [8, header_end], count=10)]
    values = [(f"{SHARD}:value=NaN", poison(SHARD, VICTIM, struct.pack("<f", NAN))),
              (f"{SHARD}:value=-inf", poison(SHARD, "model.norm.weight", struct.pack("<f", -INF)))]
    rng = random.Random(35)  # flips in the header's JSON text: most break it, some change a digit or a name
    flips = [(f"{SHARD}:header-flip-{k}.{bit}", flip(SHARD, k, bit))
             for k, bit in ((rng.randrange(8, header_end), rng.randrange(8)) for _ in range(12))]
    return (_cases_for("hf", named, ["ppl", "generate", "quantize", "tokenize"]) + _cases_for("hf", values, READS_TENSORS)
            + _cases_for("hf", flips, ["ppl"], reject=False))


def _gguf_file(model: Gguf, **encode: Any) -> Mutation:
    return put("", model.encode(**encode)[0])


def gguf_metadata_cases() -> list[Case]:
    g, a = TINY.gguf, "llama."
    overrides: list[tuple[str, list[int] | None, Any]] = [
        *[(a + "block_count", t, v) for t, v in [([STRING], "2"), ([F32], 2.0), ([I32], -2), ([U32], 0), ([U32], 3),
                                                 ([U32], 2**32 - 1), ([U64], 1 << 40), ([ARRAY, U32], [2]), ([BOOL], True)]],
        *[(a + "embedding_length", t, v) for t, v in [([U32], 0), ([U32], 63), ([U32], 1 << 20), ([F32], 64.0)]],
        *[(a + "attention.head_count", [U32], v) for v in (0, 3, 5, 1 << 31)],
        *[(a + "attention.head_count_kv", t, v) for t, v in [([U32], 0), ([U32], 3), ([U32], 8), ([STRING], "2")]],
        *[(a + "feed_forward_length", [U32], v) for v in (0, 95, 1 << 30)],
        *[(a + "context_length", t, v) for t, v in [([U32], 0), ([U64], 1 << 40), ([I32], -1)]],
        *[(a + "rope.freq_base", t, v) for t, v in [([F32], NAN), ([F32], INF), ([F32], -1.0), ([F32], 0.0), ([STRING], "1e4")]],
        *[(a + "attention.layer_norm_rms_epsilon", t, v) for t, v in
          [([F32], NAN), ([F32], INF), ([F32], -1e-5), ([F32], 0.0), ([F32], 5.0), ([U32], 1)]],
        *[(a + "vocab_size", t, v) for t, v in [([U32], 0), ([U32], VOCAB - 1), ([U32], VOCAB + 1), ([U64], 1 << 40)]],
        *[(a + "rope.dimension_count", [U32], v) for v in (0, 15, 32)],
        *[(a + "attention.key_length", [U32], v) for v in (0, 32, 2048)],
        ("general.architecture", [U32], 5), ("general.architecture", [STRING], "mamba"),
        ("general.alignment", [U32], 0), ("general.alignment", [U32], 3), ("general.alignment", [STRING], "32"),
        ("tokenizer.ggml.model", [STRING], "llama"), ("tokenizer.ggml.model", [U32], 5),
        ("tokenizer.ggml.pre", [STRING], "bogus"), ("tokenizer.ggml.pre", [ARRAY, STRING], ["gpt2"]),
        ("tokenizer.ggml.tokens", [STRING], "a"), ("tokenizer.ggml.tokens", [ARRAY, U32], list(range(VOCAB))),
        ("tokenizer.ggml.tokens", [ARRAY, STRING], []), ("tokenizer.ggml.tokens", [ARRAY, STRING], [str(i) for i in range(VOCAB + 1)]),
        ("tokenizer.ggml.token_type", [STRING], "x"), ("tokenizer.ggml.token_type", [ARRAY, I32], [1] * (VOCAB - 1)),
        ("tokenizer.ggml.token_type", [ARRAY, STRING], ["1"] * VOCAB),
        ("tokenizer.ggml.merges", [ARRAY, U32], [1, 2]), ("tokenizer.ggml.merges", [STRING], "a b"),
        ("tokenizer.ggml.merges", [ARRAY, STRING], ["ab"]),
        *[("tokenizer.ggml.bos_token_id", t, v) for t, v in [([U32], VOCAB), ([I32], -1), ([U64], 1 << 40), ([STRING], "1")]],
        *[("tokenizer.ggml.eos_token_id", t, v) for t, v in [([U32], VOCAB), ([I32], -1), ([F32], 2.0)]],
        ("tokenizer.ggml.add_bos_token", [STRING], "yes"), ("tokenizer.ggml.add_bos_token", [U32], 1),
        ("tokenizer.chat_template", [U32], 5), ("tokenizer.chat_template", [ARRAY, STRING], ["a"]),
    ]
    named = [(f"{key}={_type_name(t)}:{str(v)[:20]}", _gguf_file(g.with_kv(key, t, v))) for key, t, v in overrides]
    named += [(f"{key}=missing", _gguf_file(g.with_kv(key, None))) for key in [
        "general.architecture", a + "block_count", a + "context_length", a + "embedding_length",
        a + "feed_forward_length", a + "attention.head_count", a + "attention.layer_norm_rms_epsilon",
        "tokenizer.ggml.model", "tokenizer.ggml.tokens"]]
    scaled = g.with_kv(a + "rope.scaling.type", [STRING], "linear").with_kv(a + "rope.scaling.factor", [F32], 2.0)
    named += [("rope.scaling=linear-2", _gguf_file(scaled)),
              ("duplicate-key", _gguf_file(Gguf(g.kvs + [g.kvs[1]], g.tensors)))]
    return _cases_for("gguf", named)


def _type_name(types: list[int]) -> str:
    names = {I32: "i32", U32: "u32", F32: "f32", BOOL: "bool", STRING: "str", ARRAY: "array", U64: "u64"}
    return "-of-".join(names[t] for t in types)


def gguf_structure_cases() -> list[Case]:
    g, n_t, n_kv = TINY.gguf, len(TINY.gguf.tensors), len(TINY.gguf.kvs)
    named: list[tuple[str, Mutation]] = [(f"version={v}", _gguf_file(Gguf(g.kvs, g.tensors, v))) for v in (0, 1, 4, 2**32 - 1)]
    for what, true in (("tensor_count", n_t), ("kv_count", n_kv)):
        named += [(f"{what}={v}", _gguf_file(g, **{what: v})) for v in (0, true - 1, true + 1, 1 << 32, 1 << 63, 2**64 - 1)]
    first = g.tensors[0]
    tensors = {
        "dim=0": [(first[0], [first[1][0], 0], first[2], b"")] + g.tensors[1:],
        "dims=3": [(first[0], first[1] + [1], first[2], first[3])] + g.tensors[1:],
        "dims=5": [(first[0], first[1] + [1, 1, 1], first[2], first[3])] + g.tensors[1:],
        "dims=transposed": [(first[0], first[1][::-1], first[2], first[3])] + g.tensors[1:],
        "dim=2^40": [(first[0], [first[1][0], 1 << 40], first[2], first[3])] + g.tensors[1:],
        "dims=2^32-squared": [(first[0], [1 << 32, 1 << 32], first[2], first[3])] + g.tensors[1:],
        "type=99": [(first[0], first[1], 99, first[3])] + g.tensors[1:],
        "name=duplicate": g.tensors + [g.tensors[-1]],
        "name=unknown": g.tensors + [("blk.0.attn_q.bias", [64], 0, bytes(256))],
        "name=removed": g.tensors[:-1],
    }
    named += [(f"tensor:{name}", _gguf_file(g.with_tensors(ts))) for name, ts in tensors.items()]
    named += [(f"tensor:offset={name}", _gguf_file(g, offsets=offsets)) for name, offsets in [
        ("2^62", {0: 1 << 62}), ("overlap", {1: 0}), ("misaligned", {n_t - 1: _last_offset(g) + 4}),
        ("past-end", {n_t - 1: _last_offset(g) + (1 << 20)})]]
    named += [("tokens.count=2^40-in-6GiB", _sparse_gguf(_array_count(g, "tokenizer.ggml.tokens", 1 << 40))),
              ("token_type.count=2^32-in-6GiB", _sparse_gguf(_array_count(g, "tokenizer.ggml.token_type", 1 << 32))),
              ("kv_count=2^40-in-6GiB", _sparse_gguf(g.encode(kv_count=1 << 40)[0])),
              ("tensor_count=2^40-in-6GiB", _sparse_gguf(g.encode(tensor_count=1 << 40)[0])),
              ("file=fifo", fifo("")), ("file=dev-zero", dev_zero("")), ("file=self-link", self_link("")),
              ("file=sparse-6GiB", sparse("")), ("file=empty", put("", b"")), ("file=magic-only", put("", b"GGUF"))]
    spans = TINY.spans
    ends = [s.start for s in spans] + [s.start + s.size for s in spans]
    marks = sorted({s.start for s in spans if s.kind in ("count", "type", "n_dims")} | {max(ends)})
    named += [(f"cut-at-{k}", truncate("", k)) for k in _truncations(len(TINY.gguf_bytes), marks[::3] + [max(ends)])]
    poisoned = [(first[0], first[1], first[2], struct.pack("<f", NAN) + first[3][4:])] + g.tensors[1:]
    return (_cases_for("gguf", named, ["ppl", "generate", "quantize", "tokenize"])
            + _cases_for("gguf", [("tensor:value=NaN", _gguf_file(g.with_tensors(poisoned)))], READS_TENSORS))


def _last_offset(g: Gguf) -> int:
    return sum(len(t[3]) + (-len(t[3]) % ALIGN) for t in g.tensors[:-1])


def _sparse_gguf(data: bytes) -> Mutation:
    """`data` padded with zeros (taking no disk) to 6 GiB."""
    def mutate(src: Path) -> None:
        put("", data)(src)
        os.truncate(src, SPARSE)
    return mutate


def _array_count(g: Gguf, key: str, count: int) -> bytes:
    """The file with array `key`'s element count set to `count`."""
    data, spans = g.encode()
    at = next(s.start for s in spans if s.label == key + ".count")
    return data[:at] + struct.pack("<Q", count) + data[at + 8 :]


def _flip_refused(kind: str, bit: int) -> bool:
    """Whether flipping `bit` (0: of the field's first byte, 7: of its last) must make the file refused.

    The top bit makes a length, count, offset, dimension, version or type absurd and a key or a
    name invalid UTF-8. The low bit moves every later field (a length or count), misplaces data (an
    offset) or changes a shape or tensor name; in a type (u32 <-> i32), a key the reader does without,
    a value or the version (3 -> 2, the same layout) it may leave a file that still loads.
    """
    if bit == 7:
        return kind != "value"
    return kind in {"magic", "count", "length", "name", "n_dims", "dim", "offset"}


def gguf_flip_cases() -> list[Case]:
    """Two flips in every field of the header, the metadata and three tensors' descriptions."""
    tensors = {TINY.gguf.tensors[i][0] for i in (0, len(TINY.gguf.tensors) // 2, -1)}
    cases = []
    for span in TINY.spans:
        if span.tensor is not None and span.tensor not in tensors:
            continue
        for where, bit in ((span.start, 0), (span.start + span.size - 1, 7)):
            cases.append(Case(f"flip-{span.label}@{where}.{bit}", "gguf", flip("", where, bit),
                              "tokenize" if span.tensor is None else "ppl", _flip_refused(span.kind, bit)))
    return cases


def quantized_cases() -> list[Case]:
    m = "quantized.json"
    q_name = "blk.0.attn_q.weight"
    named: list[tuple[str, Mutation]] = [
        (f"{m}:format=x", set_key(m, "format", "x")), (f"{m}:version=2", set_key(m, "version", 2)),
        (f"{m}:version='1'", set_key(m, "version", "1")),
        (f"{m}:config=missing", set_key(m, "config", REMOVE)), (f"{m}:config={{}}", set_key(m, "config", {})),
        (f"{m}:config=list", set_key(m, "config", [])),
        (f"{m}:config.extra", edit_json(m, lambda d: {**d, "config": {**d["config"], "n_expert": 8}})),
        *[(f"{m}:config.{k}={v!r}", edit_json(m, lambda d, k=k, v=v: {**d, "config": {**d["config"], k: v}})) for k, v in [
            ("n_layer", "2"), ("n_layer", 2.5), ("n_layer", 0), ("n_layer", 1 << 31), ("n_layer", True),
            ("rms_eps", NAN), ("rms_eps", -1.0), ("rope_theta", INF), ("n_head_kv", 3),
            ("bos_id", VOCAB), ("eos_id", "2"), ("n_rot", 17), ("tied_embeddings", "yes"), ("architecture", 5)]],
        (f"{m}:tensors=list", set_key(m, "tensors", [])), (f"{m}:tensors=missing", set_key(m, "tensors", REMOVE)),
        *[(f"{m}:tensor.{k}={v!r}", edit_json(m, lambda d, k=k, v=v: _tensor_meta(d, q_name, k, v))) for k, v in [
            ("kind", "weird"), ("shape", "x"), ("shape", [-1, 64]), ("shape", [64]), ("shape", [64, 64.0]),
            ("bits", 5), ("bits", "4"), ("group", 7), ("ternary", "no"), ("scale_bits", 12), ("symmetric", 1)]],
        (f"{m}:tensor=5", edit_json(m, lambda d: {**d, "tensors": {**d["tensors"], q_name: 5}})),
        (f"{m}:chat_template=5", set_key(m, "chat_template", 5)),
        (f"{m}:deep-list", put(m, deep("[", "]"))),
        (f"{m}:deep-object", put(m, deep('{"a":', "}"))),
        (f"{m}:list", put_json(m, [])),
        ("tokenizer.json=fifo", fifo("tokenizer.json")), ("tokenizer.json=dev-zero", dev_zero("tokenizer.json")),
        ("tokenizer.json=sparse-6GiB", sparse("tokenizer.json")), ("tokenizer.json=missing", lambda src: (src / "tokenizer.json").unlink()),
        ("tokenizer.json:vocab-id=10^12", edit_json("tokenizer.json", lambda t: _vocab_id(t, 10**12))),
        ("tokenizer.json:deep-list", put("tokenizer.json", deep("[", "]"))),
        *safetensors_cases("weights.safetensors", q_name + ".scale", "blk.1.attn_q.weight.scale"),
        ("weights:planes=wrong-shape", edit_header("weights.safetensors", lambda h: entry(
            q_name + ".planes", shape=[h[q_name + ".planes"]["shape"][0] * 2, h[q_name + ".planes"]["shape"][1] // 2,
                                       h[q_name + ".planes"]["shape"][2]])(h))),
        ("weights:planes=f32", edit_header("weights.safetensors", entry(q_name + ".planes", dtype="F32"))),
        ("weights:scale=u32", edit_header("weights.safetensors", lambda h: entry(
            q_name + ".scale", dtype="U32", shape=[h[q_name + ".scale"]["shape"][0], h[q_name + ".scale"]["shape"][1] // 2])(h))),
        *[(f"weights:cut-at-{k}", truncate("weights.safetensors", k)) for k in (0, 7, 8, 100, 5000, 40000)],
    ]
    # a config at odds only with the tensors' shapes, and values that are not numbers: found when
    # the tensors are read (tokenize reads none)
    read = [(f"{m}:config.n_embd=65", edit_json(m, lambda d: {**d, "config": {**d["config"], "n_embd": 65}})),
            ("weights:scale=NaN", poison("weights.safetensors", q_name + ".scale", struct.pack("<e", NAN))),
            ("weights:norm=inf", poison("weights.safetensors", "output_norm.weight", struct.pack("<f", INF)))]
    return _cases_for("quantized", named) + _cases_for("quantized", read, READS_TENSORS)


def _tensor_meta(manifest: dict, name: str, key: str, value: Any) -> dict:
    return {**manifest, "tensors": {**manifest["tensors"], name: {**manifest["tensors"][name], key: value}}}


def all_cases() -> list[Case]:
    cases = [*hf_config_cases(), *hf_file_cases(), *hf_safetensors_cases(), *gguf_metadata_cases(),
             *gguf_structure_cases(), *gguf_flip_cases(), *quantized_cases()]
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids), [i for i in ids if ids.count(i) > 1][:5]
    return cases


CASES = all_cases()
CONTROLS = [Case("unchanged", kind, lambda src: None, command, reject=False) for kind in SOURCES for command in COMMANDS]


# -- running them -------------------------------------------------------------------------------

@dataclass
class Ran:
    result: hostile.Result
    work: Path
    before: set[str]  # the case folder's entries before the run

    @property
    def left(self) -> set[str]:
        return {p.name for p in self.work.iterdir()} - self.before


def _pristine(root: Path) -> None:
    """The tiny model as a Hugging Face folder, a GGUF file and a quantised checkpoint, plus a text."""
    from lutlm import cli

    (root / "hf").mkdir()
    for name, data in TINY.hf.items():
        (root / "hf" / name).write_bytes(data)
    (root / "model.gguf").write_bytes(TINY.gguf_bytes)
    (root / "text.txt").write_text("The quick brown fox jumps over the lazy dog. Hello, world! " * 4)
    assert cli.main(["quantize", str(root / "hf"), "--bits", "4", "--method", "rtn", "-o", str(root / "q")]) == 0


def _materialise(root: Path, pristine: Path, index: int, case: Case) -> tuple[list[str], str]:
    work = root / f"{index:04d}"
    work.mkdir()
    source = work / SOURCES[case.kind]
    original = pristine / SOURCES[case.kind]
    if original.is_dir():
        shutil.copytree(original, source)
    else:
        shutil.copyfile(original, source)
    case.mutate(source)
    argv = [source.name if a == "SRC" else a for a in COMMANDS[case.command]]
    return argv, str(work)


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict[str, Ran]:
    """Every case and control, run in one batch of forks; keyed by case id."""
    root = tmp_path_factory.mktemp("fuzz-intake")
    pristine = root / "pristine"
    pristine.mkdir()
    _pristine(pristine)
    shutil.copyfile(pristine / "text.txt", root / "text.txt")
    everything = CASES + CONTROLS
    runs = [_materialise(root, pristine, i, case) for i, case in enumerate(everything)]
    befores = [{p.name for p in Path(cwd).iterdir()} for _, cwd in runs]
    results = hostile.run(runs, seconds=2 * SECONDS)
    done = {case.id: Ran(r, Path(cwd), b) for case, r, (_, cwd), b in zip(everything, results, runs, befores)}
    _summarise([done[c.id] for c in CASES], CASES)
    return done


def _problem(case: Case, ran: Ran) -> str | None:
    """Why this case's outcome is wrong, or None."""
    r = ran.result
    if r.status is None or r.seconds > SECONDS:
        return f"took {r.seconds:.1f} s"
    if r.peak_mib > PEAK_MIB:
        return f"peak memory {r.peak_mib:.0f} MiB"
    if case.reject or r.status != 0:
        why = r.one_line_error()
        if why:
            return why
        if GENERIC.search(r.stderr):
            return "the top-level handler's message, not the reader's"
        if not re.search(rf"(^|[\s']){re.escape(SOURCES[case.kind])}[/:\s']", r.stderr.strip().splitlines()[-1]):
            return "the error does not name the file"
        if ran.left:
            return f"left {sorted(ran.left)} behind"
    return None


def _summarise(runs: list[Ran], cases: list[Case]) -> None:
    print(hostile.report("intake", [(c.id, r.result, _problem(c, r)) for c, r in zip(cases, runs)]))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_model_file(ran, case):
    run = ran[case.id]
    problem = _problem(case, run)
    assert problem is None, f"{problem}: lutlm {' '.join(run.result.argv)}\n{run.result.stderr[-3000:]}"


@pytest.mark.parametrize("case", CONTROLS, ids=[c.id for c in CONTROLS])
def test_unchanged_model_succeeds(ran, case):
    """The harness tells a clean run from a rejection: the same commands on the undamaged model exit 0."""
    run = ran[case.id]
    assert run.result.status == 0, run.result.stderr[-3000:]
    assert run.result.seconds <= SECONDS and run.result.peak_mib <= PEAK_MIB
    if case.command == "quantize":
        assert run.left == {"out"}

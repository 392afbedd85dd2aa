"""runtime_py.browser, the Python the web worker calls, run natively on the wgpu backend (and on
the CPU kernels' module in wasmtime, as the worker hands it its instance): the files it lists for
a package are all a load needs, a package of another format or version is refused from its
manifest alone, and chats stream exactly what runtime_py.api streams for the same request, stop
when asked and forget the conversation on reset."""

from __future__ import annotations

import asyncio
import json
import shutil
from operator import itemgetter

import pytest

from kernel_harness import backend
from lutlm import wasm
from runtime_py.api import LutLM
from runtime_py.browser import Session, package_files
from runtime_py.cpu_wasmtime import WasmtimeModule
from runtime_py.engine import GenerationError
from runtime_py.gpu import GPUError
from runtime_py.gpu_wgpu import WgpuBackend
from runtime_py.package import FORMAT, VERSION, PackageError

REQUEST = {"messages": [{"role": "user", "content": "Hello, world! Paris is"}], "temperature": 0,
           "max_tokens": 12, "ignore_eos": True}  # random weights: run to max_tokens whatever they say
CTX = 96


def stage(package, folder):
    """What the worker does: the manifest, then every file package_files lists, and nothing else."""
    folder.mkdir()
    shutil.copy(package / "manifest.json", folder / "manifest.json")
    listed = json.loads(package_files(str(folder)))
    for entry in listed["files"] + listed["shards"]:
        (folder / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(package / entry["file"], folder / entry["file"])
    return folder


@pytest.fixture(scope="module")
def staged(tiny_package, tmp_path_factory):
    return stage(tiny_package, tmp_path_factory.mktemp("browser") / "package")


@pytest.fixture
def session(staged):
    s = Session()
    asyncio.run(s.load(str(staged), CTX, backend()))
    return s


def chat(session, request):
    """The chunks the worker would post for `request`, parsed."""
    sent: list[str] = []
    asyncio.run(session.chat(json.dumps(request), sent.append))
    return [json.loads(text) for text in sent]


def native_chunks(package, request, on=None):
    """runtime_py.api's stream for the same request, on a model of its own (on `on`, else the GPU)."""
    llm = LutLM.from_folder(str(package), on or backend(), CTX)

    async def run():
        return [c async for c in await llm.chat.completions.create(stream=True, **request)]

    return asyncio.run(run())


def shape(chunks):
    """What a chunk says, without its id and times."""
    times = ("ttft_s", "decode_tokens_per_s", "host_ms_per_token")
    usage = {k: v for k, v in chunks[-1]["usage"].items() if k not in times}
    return [(c["object"], c["model"], c["choices"]) for c in chunks], usage


def fields(entry):
    return {k: entry[k] for k in ("file", "bytes", "sha256")}


@pytest.mark.slow
def test_package_files_lists_the_manifests_files_shards_apart(tiny_package):
    manifest = json.loads((tiny_package / "manifest.json").read_text())
    listed = json.loads(package_files(str(tiny_package)))
    assert listed["shards"] == [fields(s) for s in manifest["shards"]]
    others = {e["file"]: fields(e) for e in [manifest["tokenizer"], *manifest["kernels"].values()]}
    assert sorted(listed["files"], key=itemgetter("file")) == sorted(others.values(), key=itemgetter("file"))


@pytest.mark.slow
@pytest.mark.parametrize("change, says", [
    ({"version": VERSION + 1}, f"version {VERSION + 1}; this runtime reads {FORMAT!r} version {VERSION}"),
    ({"version": VERSION - 1}, "compile the model again"),
    ({"format": "gguf"}, f"package format 'gguf' version {VERSION}; this runtime reads {FORMAT!r}"),
])
def test_another_format_or_version_is_refused_from_the_manifest_alone(tiny_package, tmp_path, change, says):
    manifest = json.loads((tiny_package / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, **change}))
    with pytest.raises(PackageError, match=says):
        package_files(str(tmp_path))


@pytest.mark.gpu
def test_load_reports_the_model_its_context_and_gpu(staged):
    gpu = WgpuBackend()
    info = json.loads(asyncio.run(Session().load(str(staged), CTX, gpu)))
    manifest = json.loads((staged / "manifest.json").read_text())
    shard_bytes = sum(s["bytes"] for s in manifest["shards"])
    assert info == {"model": manifest["name"], "ctx": CTX, "adapter": gpu.info, "gpu_bytes": gpu.allocated["bytes"]}
    assert info["gpu_bytes"] >= shard_bytes  # the weights, and the cache and activations besides


def cpu_module():
    return WasmtimeModule({level: str(wasm.build(level)) for level in wasm.LEVELS})


@pytest.mark.slow
def test_load_on_the_cpu_reports_its_module_and_chats_as_the_api_does(staged, tiny_package):
    from runtime_py.cpu import CpuBackend

    session = Session()
    info = json.loads(asyncio.run(session.load(str(staged), CTX, device="cpu", wasm=cpu_module())))
    assert info["adapter"] == {"backend": "cpu", "simd": "relaxed", "threads": 1,
                               "description": "WebAssembly SIMD (relaxed), 1 thread"}
    assert info["gpu_bytes"] >= sum(s["bytes"] for s in json.loads((staged / "manifest.json").read_text())["shards"])
    assert shape(chat(session, REQUEST)) == shape(native_chunks(tiny_package, REQUEST, CpuBackend(cpu_module())))


def test_load_refuses_an_unknown_device_or_a_cpu_without_its_module():
    with pytest.raises(GPUError, match="unknown device 'tpu': webgpu or cpu"):
        asyncio.run(Session().load("/nowhere", device="tpu"))
    with pytest.raises(GPUError, match="needs its kernels' module"):
        asyncio.run(Session().load("/nowhere", device="cpu"))


@pytest.mark.gpu
def test_chat_streams_what_the_api_streams(session, tiny_package):
    chunks = chat(session, REQUEST)
    assert shape(chunks) == shape(native_chunks(tiny_package, REQUEST))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and chunks[-1]["usage"]["completion_tokens"] == 12
    assert len({c["id"] for c in chunks}) == 1


@pytest.mark.gpu
def test_stop_ends_the_running_chat_and_only_it(session):
    sent: list[str] = []

    def emit(text):
        sent.append(text)
        session.stop()  # as the worker does when the page's stop arrives between two tokens

    asyncio.run(session.chat(json.dumps({**REQUEST, "max_tokens": 60}), emit))
    last = json.loads(sent[-1])
    assert last["choices"][0]["finish_reason"] == "abort" and last["usage"]["completion_tokens"] < 60
    assert chat(session, REQUEST)[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.gpu
def test_reset_forgets_the_conversation(session):
    assert chat(session, REQUEST)[-1]["usage"]["reused_tokens"] == 0
    assert chat(session, REQUEST)[-1]["usage"]["reused_tokens"] > 0  # the same prompt: its cache is kept
    session.reset()
    assert chat(session, REQUEST)[-1]["usage"]["reused_tokens"] == 0


@pytest.mark.gpu
def test_chat_is_refused_without_a_model_or_with_a_bad_request(session):
    idle = Session()
    idle.stop()
    idle.reset()  # nothing loaded: nothing to stop or forget
    with pytest.raises(GenerationError, match="no model is loaded"):
        chat(idle, REQUEST)
    with pytest.raises(GenerationError, match="unknown parameter.*frequency_penalty"):
        chat(session, {**REQUEST, "frequency_penalty": 1})
    with pytest.raises(GenerationError, match="a chat request is a JSON object"):
        chat(session, [REQUEST])

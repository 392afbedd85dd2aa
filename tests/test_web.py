"""The browser path end to end, in headless Chromium (SwiftShader WebGPU, or none): the built app
loads a package into Pyodide + runtime_py in a Web Worker, keeps it in the Cache API, works offline
after one visit, shows model output as text, stops on request, refuses a second prompt while busy,
repairs a damaged cached shard, loads again after losing its GPU device, chats on the CPU kernels
without WebGPU, on a software adapter or when told to, and never sends a request beyond 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from pathlib import Path

import pytest

from engine_fixtures import compile_package, tiny_checkpoint
from kernel_harness import backend
from lutlm import build, webapp
from lutlm.headless import AppPage, chromium
from runtime_py.api import LutLM
from runtime_py.package import FORMAT, VERSION

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PROMPT = "Hello, world! Paris is"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "results" / "screenshots"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    compile_package(tiny_checkpoint(root / "hf"), root / "tiny-q4")
    shutil.copytree(root / "tiny-q4", root / "future-format")
    manifest = json.loads((root / "future-format" / "manifest.json").read_text())
    (root / "future-format" / "manifest.json").write_text(json.dumps({**manifest, "version": VERSION + 1}))
    srv = webapp.server(webapp.build(root / "site", [root / "tiny-q4", root / "future-format"]))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/", root / "tiny-q4"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def native_text(site):
    llm = LutLM.from_folder(str(site[1]), backend())
    reply = asyncio.run(llm.chat.completions.create(messages=[{"role": "user", "content": PROMPT}],
                                                    temperature=0, max_tokens=12))
    return reply["choices"][0]["message"]["content"]


@pytest.fixture(scope="module")
def native_cpu_text(site):
    """The native CPU path's answer (`lutlm generate PKG --device cpu`): the same module in wasmtime."""
    llm = build.open_package(site[1], device="cpu")
    reply = asyncio.run(llm.chat.completions.create(messages=[{"role": "user", "content": PROMPT}],
                                                    temperature=0, max_tokens=12))
    return reply["choices"][0]["message"]["content"]


def load(page, url, device="webgpu"):
    """The app's load; on WebGPU unless told otherwise ("auto" takes SwiftShader for software: the CPU)."""
    AppPage(page, url).load(timeout_s=120, device=device)


def ask(page, text, max_tokens=12):
    return AppPage(page, "").ask(text, {"temperature": 0, "max_tokens": max_tokens}, timeout_s=120)[0]


@pytest.mark.gpu
def test_chat_offline_and_cache(site, native_text):
    url, package = site
    offsite: list[str] = []
    with chromium(offsite) as context:
        page = context.new_page()
        load(page, url)
        assert "swiftshader" in page.text_content("#status")
        assert ask(page, PROMPT) == native_text  # the browser gives the native runtime's text
        assert "12 tokens" in page.locator(".stats").last.text_content()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "chat.png"))
        page.wait_for_function("navigator.serviceWorker.controller !== null || navigator.serviceWorker.ready", timeout=30_000)
        page.evaluate("navigator.serviceWorker.ready")
        # offline: the app shell, Pyodide and runtime_py from the service worker, the model from the Cache API
        context.set_offline(True)
        page.reload()
        load(page, url)
        assert ask(page, PROMPT) == native_text
        context.set_offline(False)
        # a damaged shard in the cache is noticed, fetched again, and the model still answers
        page.evaluate("""async () => {
            const cache = await caches.open('lutlm-models-v1');
            const key = (await cache.keys()).find((r) => r.url.endsWith('shards/000.bin'));
            const data = new Uint8Array(await (await cache.match(key)).arrayBuffer());
            data[100] ^= 255;
            await cache.put(key, new Response(data));
        }""")
        page.reload()
        load(page, url)
        assert "damaged: downloading it again" in page.text_content("#log")
        assert ask(page, PROMPT) == native_text
    assert offsite == []


def test_output_is_text_stop_and_queue(site):
    url, package = site
    offsite: list[str] = []
    with chromium(offsite) as context:
        page = context.new_page()
        load(page, url)
        # stop: the page asks the worker to stop as soon as the first piece arrives; a second
        # prompt sent meanwhile is refused with a message, never interleaved
        page.evaluate("""() => {
            document.body.dataset.params = JSON.stringify({temperature: 0, max_tokens: 120});
            app.worker.addEventListener('message', (e) => {
                if (e.data.type === 'chunk' && !window.stopSent) { window.stopSent = true; document.querySelector('#stop').click(); }
            });
            document.querySelector('#prompt').value = 'Hello, world! Paris is';
            document.querySelector('#send').click();
            document.querySelector('#prompt').value = 'a second question';
            document.querySelector('#send').click();
        }""")
        assert "Still answering" in page.text_content("#log")
        page.wait_for_function("document.body.dataset.state !== 'generating'", timeout=60_000)
        stats = page.locator(".stats").last.text_content()
        assert "(abort)" in stats and int(stats.split()[0]) <= 3, stats
        # model output containing markup is shown literally: nothing is parsed as HTML (the chunk
        # is injected in the same task as the send, while the answer is surely still current)
        page.evaluate("""() => { document.body.dataset.params = JSON.stringify({temperature: 0, max_tokens: 3});
            document.querySelector('#prompt').value = 'Hi'; document.querySelector('#send').click();
            app.worker.onmessage({data: {type: 'chunk', id: app.current.id, chunk: {choices: [{index: 0, finish_reason: null,
                delta: {content: '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'}}]}}}); }""")
        page.wait_for_function("document.body.dataset.state !== 'generating'", timeout=60_000)
        answer = page.locator(".assistant").last
        assert '<img src=x onerror="window.pwned=1">' in answer.text_content()
        assert answer.locator("img, script").count() == 0
        assert page.evaluate("window.pwned === undefined")
        # the stored-model list shows the package with its size; Delete empties the cache
        page.click("#settings summary")
        page.wait_for_function("document.querySelector('#cached').textContent.includes('MiB stored')")
        assert "tiny-q4:" in page.text_content("#cached") and "MiB available" in page.text_content("#storage")
        page.click("#cached button")
        page.wait_for_function("document.querySelector('#cached').textContent.includes('No model stored')")
    assert offsite == []


CPU_STATUS = "CPU · WebAssembly SIMD (relaxed) · 1 thread"


def test_chat_on_cpu_without_webgpu_and_offline(site, native_cpu_text):
    """No WebGPU adapter: the app chats on the CPU kernels (the relaxed build, which this Chromium
    validates) with the native CPU path's text, offline too once visited."""
    url, _ = site
    offsite: list[str] = []
    with chromium(offsite, webgpu=False) as context:
        page = context.new_page()
        load(page, url, "auto")
        assert CPU_STATUS in page.text_content("#status")
        assert page.evaluate("window.loadInfo.adapter") == {"backend": "cpu", "simd": "relaxed", "threads": 1,
                                                            "description": "WebAssembly SIMD (relaxed), 1 thread"}
        assert ask(page, PROMPT) == native_cpu_text
        page.evaluate("navigator.serviceWorker.ready")
        context.set_offline(True)  # the kernels' builds come from the service worker's cache
        page.reload()
        load(page, url, "auto")
        assert ask(page, PROMPT) == native_cpu_text
        context.set_offline(False)
        # forcing WebGPU where there is none says what to do
        with pytest.raises(RuntimeError, match="set Device to CPU or Auto"):
            load(page, url, "webgpu")
    assert offsite == []


def test_device_setting_with_webgpu_present(site, native_cpu_text):
    """With SwiftShader's WebGPU, "auto" takes the CPU (a fallback adapter), "webgpu" the adapter,
    "cpu" the CPU; the setting is kept across visits."""
    url, _ = site
    offsite: list[str] = []
    with chromium(offsite) as context:
        page = context.new_page()
        load(page, url, "auto")
        assert CPU_STATUS in page.text_content("#status")
        load(page, url, "webgpu")
        assert "WebGPU · google swiftshader" in page.text_content("#status")
        load(page, url, "cpu")
        assert CPU_STATUS in page.text_content("#status")
        assert ask(page, PROMPT) == native_cpu_text
        page.reload(wait_until="commit")
        page.wait_for_selector("#model option", state="attached")
        assert page.input_value("#device") == "cpu"
    assert offsite == []


def test_another_format_is_refused(site):
    url, _ = site
    with chromium() as context:
        page = context.new_page()
        with pytest.raises(RuntimeError, match=f"version {VERSION + 1}; this runtime reads {FORMAT!r} version {VERSION}"):
            AppPage(page, url).load("future-format", timeout_s=120)


def test_device_loss_then_load_again(site, native_text):
    """A lost GPU device (here destroyed from the worker, as the browser does when it resets the
    GPU) gets the lost screen with the chat disabled; Load brings the model back on a new device
    and it answers as before."""
    url, _ = site
    with chromium() as context:
        page = context.new_page()
        page.goto(url, wait_until="commit")
        page.wait_for_selector("#model option", state="attached")
        page.select_option("#device", "webgpu")
        page.workers[0].evaluate("""(() => {  // keep a handle on each device the app creates
            const request = GPUAdapter.prototype.requestDevice;
            GPUAdapter.prototype.requestDevice = async function (...args) {
                const device = await request.apply(this, args);
                self.testDevices = (self.testDevices || []).concat([device]);
                return device;
            };
        })()""")
        page.click("#load")
        page.wait_for_function("document.body.dataset.state === 'ready'", timeout=120_000)
        page.workers[0].evaluate("self.testDevices.at(-1).destroy()")
        page.wait_for_function("document.body.dataset.state === 'lost'", timeout=30_000)
        assert "The GPU device was lost" in page.locator(".error").last.text_content()
        assert page.is_disabled("#send") and page.is_disabled("#prompt") and page.is_enabled("#load")
        page.click("#load")
        page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)", timeout=120_000)
        assert page.evaluate("document.body.dataset.state") == "ready", page.text_content("#log")
        assert page.workers[0].evaluate("self.testDevices.length") == 2
        assert ask(page, PROMPT) == native_text

"""The browser path end to end: the built app in headless Chromium (SwiftShader WebGPU) loads a
package into Pyodide + runtime_py in a Web Worker and answers a greedy chat turn with the same
text as the native runtime on the same package, with no request leaving 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading

import pytest

from engine_fixtures import compile_package, tiny_checkpoint
from kernel_harness import backend
from lutlm import webapp
from lutlm_bench.browser import chromium
from runtime_py.api import LutLM

PROMPT = "Hello, world! Paris is"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    compile_package(tiny_checkpoint(root / "hf"), root / "tiny-q4")
    srv = webapp.server(webapp.build(root / "site", [root / "tiny-q4"]))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/", root / "tiny-q4"
    srv.shutdown()
    srv.server_close()


def test_browser_chat_turn_matches_native(site):
    url, package = site
    native = LutLM.from_folder(str(package), backend())
    want = asyncio.run(native.chat.completions.create(messages=[{"role": "user", "content": PROMPT}],
                                                      temperature=0, max_tokens=12))
    offsite: list[str] = []
    with chromium(offsite) as context:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#model option", state="attached")
        page.click("#load")
        page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)", timeout=120_000)
        assert page.evaluate("document.body.dataset.state") == "ready", page.text_content("#log")
        assert "swiftshader" in page.text_content("#status")
        page.evaluate("document.body.dataset.params = JSON.stringify({temperature: 0, max_tokens: 12})")
        page.fill("#prompt", PROMPT)
        page.click("#send")
        page.wait_for_function("document.body.dataset.state !== 'generating'", timeout=120_000)
        assert page.evaluate("document.body.dataset.state") == "idle", page.text_content("#log")
        assert page.text_content(".assistant") == want["choices"][0]["message"]["content"]
        assert "12 tokens" in page.text_content(".stats")
    assert offsite == []

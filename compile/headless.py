"""The web app driven in headless Chromium (Debian's, software WebGPU) through Playwright.

`lutlm serve --check` proves the browser path with it, and the benchmark harness and the tests
measure and check the app with the same driver, so it lives here in the product: the harness
imports the product, never the other way round. The browser can reach nothing but 127.0.0.1 and
records every request that tries to, so a run can show that nothing left the machine."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any, Iterator

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--enable-unsafe-webgpu", "--no-sandbox", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--enable-blink-features=ForceEagerMeasureMemory",  # memory measurements without waiting for a GC
         # nothing beyond this machine: other hosts resolve to nothing, other addresses go to a dead proxy
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9"]


@contextlib.contextmanager
def chromium(offsite: list[str] | None = None, webgpu: bool = True, profile: Path | None = None) -> Iterator[Any]:
    """A fresh headless Chromium context that cannot reach anything but 127.0.0.1 (its resolver
    maps every other host to nothing); requests to other origins are appended to `offsite`.
    (Not Playwright routing: it stalls pages whose service worker fetches.) `webgpu=False` starts
    it without WebGPU; `profile` keeps its storage in that folder for a later launch, else the
    profile is thrown away."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise RuntimeError(f"{CHROMIUM} not found (the set-up installs Debian's chromium)")
    with tempfile.TemporaryDirectory(prefix="lutlm-chromium-") as tmp, sync_playwright() as pw:
        flags = FLAGS if webgpu else [f for f in FLAGS if f != "--enable-unsafe-webgpu"]
        context = pw.chromium.launch_persistent_context(str(profile or tmp), executable_path=CHROMIUM, headless=True,
                                                        args=flags)
        try:
            def seen(request: Any) -> None:
                url = request.url
                if url.split(":", 1)[0] in ("http", "https", "ws", "wss") and not url.startswith("http://127.0.0.1:"):
                    offsite.append(url)

            if offsite is not None:
                context.on("request", seen)
            yield context
        finally:
            context.close()


class AppPage:
    """The lutlm chat page driven like a person would: pick a model, load it, ask."""

    def __init__(self, page: Any, url: str) -> None:
        self.page, self.url = page, url

    def load(self, model: str | None = None, timeout_s: float = 600, device: str | None = None) -> float:
        """Open the app, load `model` (default: the first listed) on `device` ("auto", "webgpu" or
        "cpu"; default: the page's setting); returns the load time in s."""
        page = self.page
        # "commit": once the service worker controls the page, Playwright never sees the load
        # event of a navigation it serves (the page itself is complete); the model list is the sign
        page.goto(self.url, wait_until="commit")
        page.wait_for_selector("#model option", state="attached")
        if model:
            page.select_option("#model", model)
        if device:
            page.select_option("#device", device)
        page.click("#load")
        page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)",
                               timeout=timeout_s * 1000)
        if page.evaluate("document.body.dataset.state") != "ready":
            raise RuntimeError(f"the app did not load the model: {page.text_content('#status')} {page.text_content('#log')}")
        return float(page.evaluate("window.loadSeconds"))

    def new_chat(self) -> None:
        self.page.click("#reset")

    def ask(self, text: str, params: dict | None = None, timeout_s: float = 900) -> tuple[str, dict]:
        """Send `text` with sampling `params`; returns the answer and the runtime's usage."""
        page = self.page
        page.evaluate(f"document.body.dataset.params = {json.dumps(json.dumps(params or {'temperature': 0}))}")
        page.fill("#prompt", text)
        page.click("#send")
        page.wait_for_function("document.body.dataset.state !== 'generating'", timeout=timeout_s * 1000)
        if page.evaluate("document.body.dataset.state") != "idle":
            raise RuntimeError(f"the app failed to answer: {page.text_content('#log')}")
        return page.locator(".assistant").last.text_content(), page.evaluate("window.lastUsage")

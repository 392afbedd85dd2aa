"""Shared fixtures (the real default model and texts, fetched once into the cache; tiny models),
and the check that every test declares what it needs.

A test says what it needs with markers (registered in pyproject.toml): `model` (the real SmolLM2,
fetched into the cache), `gpu` (a native WebGPU adapter through wgpu-py), `browser` (headless
Chromium), `slow` (more than a few seconds). `make test-fast` runs the rest, numpy and pure Python
only. A test that reaches the model, the GPU or Chromium without its marker fails here, so the
markers cannot drift from what the tests do (work done in a subprocess is not seen).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import lutlm.assets
from lutlm.assets import DEFAULT_MODEL
from lutlm.checkpoint import Checkpoint
from lutlm.intake import load_checkpoint
from runtime_py import Tokenizer


@pytest.fixture(scope="session")
def model_path() -> Path:
    return lutlm.assets.fetch(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def checkpoint(model_path: Path) -> Checkpoint:
    return load_checkpoint(model_path)


@pytest.fixture(scope="session")
def tokenizer(checkpoint: Checkpoint) -> Tokenizer:
    return Tokenizer(checkpoint.tokenizer)


@pytest.fixture(scope="session")
def tokenizer_json(checkpoint: Checkpoint, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    path.write_text(json.dumps(checkpoint.tokenizer), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_package(tmp_path_factory) -> Path:
    """The tiny random Llama of tiny_llama.py (its Hugging Face folder beside it, as `hf`) compiled
    once per run to a 4-bit package. Shared: read it, copy it to change it."""
    from engine_fixtures import compile_package, tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    compile_package(tiny_checkpoint(root / "hf"), root / "pkg")
    return root / "pkg"


MODEL_FIXTURES = {"model_path", "checkpoint", "tokenizer", "tokenizer_json"}
_current: list[pytest.Item | None] = [None]
_undeclared: dict[str, set[str]] = {}  # test id -> markers it lacks for what it did


def _uses(marker: str) -> None:
    item = _current[0]
    if item is not None and item.get_closest_marker(marker) is None:
        _undeclared.setdefault(item.nodeid, set()).add(marker)


def _watch(owner: object, names: tuple[str, ...], marker: str) -> None:
    for name in names:
        original = getattr(owner, name)

        def watched(*args, _original=original, **kwargs):
            _uses(marker)
            return _original(*args, **kwargs)

        setattr(owner, name, watched)


def pytest_configure(config) -> None:
    import lutlm.headless
    from runtime_py.gpu_wgpu import WgpuBackend

    _watch(lutlm.assets, ("fetch",), "model")
    _watch(WgpuBackend, ("__init__", "create_buffer", "submit"), "gpu")
    # every Chromium start goes through the product's driver (it alone calls sync_playwright), and
    # watching it there spares every pytest start the import of Playwright itself
    _watch(lutlm.headless, ("chromium",), "browser")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _current[0] = item  # before its fixtures are set up: what they do counts for this test
    if MODEL_FIXTURES & set(item.fixturenames):
        _uses("model")


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    lacking = _undeclared.pop(item.nodeid, None)
    if lacking:
        pytest.fail(f"{item.nodeid} uses what these markers declare but lacks them: "
                    f"{', '.join(f'@pytest.mark.{m}' for m in sorted(lacking))}", pytrace=False)


_STARTED = [0.0]


def pytest_sessionstart(session) -> None:
    _STARTED[0] = time.time()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The fuzz suites' counts, slowest case and peak memory in the closing lines (and so in CI's log)."""
    import hostile

    for path in sorted(hostile.RESULTS.glob("fuzz-*.json")):
        if path.stat().st_mtime < _STARTED[0]:
            continue  # written by an earlier run
        s = json.loads(path.read_text(encoding="utf-8"))
        terminalreporter.write_line(f"fuzz {s['suite']}: {s['passed']} of {s['cases']} cases passed "
                                    f"({s['refused']} refused with exit 2); slowest {s['slowest_s']:.2f} s "
                                    f"({s['slowest_case']}), peak {s['peak_mib']:.0f} MiB")

"""Shared fixtures: the real default model and texts (fetched once into the cache), tiny models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lutlm.assets import DEFAULT_MODEL, fetch
from lutlm.checkpoint import Checkpoint
from lutlm.intake import load_checkpoint
from runtime_py import Tokenizer


@pytest.fixture(scope="session")
def model_path() -> Path:
    return fetch(DEFAULT_MODEL)


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

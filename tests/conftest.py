"""Shared fixtures: the real default model and texts (fetched once into the cache), tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lutlm.assets import DEFAULT_MODEL, fetch
from lutlm.checkpoint import Checkpoint, load_checkpoint
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

"""Fetching models and texts: verified, cached, repaired, and never re-downloaded needlessly."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from lutlm import assets
from lutlm.errors import LutlmError

pytestmark = pytest.mark.model


def _no_network(*args, **kwargs):
    raise AssertionError(f"unexpected download: {args}")


def test_fetch_is_a_no_op_when_present(model_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", _no_network)
    assert assets.fetch("smollm2-135m-instruct") == model_path
    assert assets.sha256_file(model_path) == assets.ASSETS["smollm2-135m-instruct"].sha256


def test_corrupt_file_is_replaced_from_the_cached_wheel(tmp_path, monkeypatch):
    real = assets.fetch("tiny")  # makes sure the texts' wheel is cached
    wheel = next((real.parent.parent / "wheels").glob("exllamav2-*.whl"))
    monkeypatch.setenv("LUTLM_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    shutil.copy(wheel, tmp_path / "wheels")
    target = tmp_path / "texts" / "tiny.utf8"
    target.parent.mkdir()
    target.write_text("tampered")
    monkeypatch.setattr(subprocess, "run", _no_network)
    assert assets.fetch("tiny") == target
    assert target.read_bytes() == real.read_bytes()


def test_wrong_sha256_is_refused(tmp_path, monkeypatch):
    real = assets.fetch("tiny")
    wheel = next((real.parent.parent / "wheels").glob("exllamav2-*.whl"))
    monkeypatch.setenv("LUTLM_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    shutil.copy(wheel, tmp_path / "wheels")
    bogus = assets.Asset("tiny", "text", "exllamav2==0.3.2", assets.ASSETS["tiny"].member, "0" * 64)
    monkeypatch.setitem(assets.ASSETS, "tiny", bogus)
    with pytest.raises(LutlmError, match="sha256"):
        assets.fetch("tiny")
    assert not (tmp_path / "texts" / "tiny.utf8").exists()


def test_unknown_asset():
    with pytest.raises(LutlmError, match="unknown asset 'nope'"):
        assets.fetch("nope")

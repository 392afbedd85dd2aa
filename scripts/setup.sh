#!/usr/bin/env bash
# Idempotent set-up for lutlm on Debian: system packages (browser, software Vulkan, the wasm
# toolchain), a virtual environment with the project installed editable, the npm dependencies,
# and the default model in the cache.
# Each step is skipped when what it makes is already there and up to date.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(chromium chromium-driver mesa-vulkan-drivers)
# The CPU kernels (shaders/cpu/*.c, built by lutlm.wasm): clang 19 for wasm32 with SIMD, and its wasm-ld.
APT_PACKAGES+=(clang-19 lld-19)
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(nodejs npm)
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || APT_PACKAGES+=(python3-venv python3-pip)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "setup: installing Debian packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python: .venv with the project (editable) and the test oracles; re-installed when pyproject changes.
[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=".venv/.lutlm-pyproject.sha256"
if ! sha256sum --status -c "$stamp" 2>/dev/null; then
    echo "setup: installing Python dependencies into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
    sha256sum pyproject.toml > "$stamp"
fi

# npm: exact versions from package-lock.json; re-installed when the lock file changes.
npm_stamp="node_modules/.lutlm-lock.sha256"
if ! sha256sum --status -c "$npm_stamp" 2>/dev/null; then
    echo "setup: installing npm dependencies"
    npm ci --no-audit --no-fund --loglevel=error
    sha256sum package-lock.json > "$npm_stamp"
fi

# The default model (a no-op when it is cached and its sha256 matches).
.venv/bin/lutlm fetch smollm2-135m-instruct >/dev/null

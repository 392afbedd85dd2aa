# The two commands of README's quick start. Both run the idempotent set-up first.
VENV := .venv/bin
DEMO_PROMPT ?= What is the capital of France?
DEMO_PACKAGE := build/smollm2-135m-instruct-q4
DEMO_PORT ?= 8000

.PHONY: setup demo test test-fast

setup:
	@bash scripts/setup.sh

# Compile the default model to a 4-bit package (round to nearest: lossless on the shipped Q4_1
# weights) and answer one chat turn on the GPU runtime (wgpu-py; lavapipe on a machine without GPU).
# Then build the web app and serve it on 127.0.0.1; without a display, one chat turn is driven
# through headless Chromium (SwiftShader WebGPU) to prove the browser path, and make returns.
demo: setup
	@$(VENV)/lutlm compile smollm2-135m-instruct --bits 4 --method rtn -o $(DEMO_PACKAGE)
	@echo "> $(DEMO_PROMPT)"
	@echo "$(DEMO_PROMPT)" | $(VENV)/lutlm chat $(DEMO_PACKAGE) --temperature 0 --max-tokens 128
	@$(VENV)/lutlm serve $(DEMO_PACKAGE) --port $(DEMO_PORT) --check "$(DEMO_PROMPT)" \
		--screenshot results/screenshots/demo.png $(if $(DISPLAY),,--exit-after-check)

test: setup
	$(VENV)/python -m pytest $(PYTEST_ARGS)

# The tests that need no model, GPU or browser and are not slow: numpy and pure Python, for editing.
test-fast: setup
	$(VENV)/python -m pytest -q -m "not (model or gpu or browser or slow)" $(PYTEST_ARGS)

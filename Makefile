# The two commands of README's quick start. Both run the idempotent set-up first.
VENV := .venv/bin
DEMO_PROMPT ?= What is the capital of France?

.PHONY: setup demo test

setup:
	@bash scripts/setup.sh

demo: setup
	@echo "> $(DEMO_PROMPT)"
	@$(VENV)/lutlm generate smollm2-135m-instruct --chat --prompt "$(DEMO_PROMPT)"

test: setup
	$(VENV)/python -m pytest $(PYTEST_ARGS)

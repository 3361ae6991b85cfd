# ICG: the two commands a new user runs are `make demo` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# a dropped connection mid-wheel resumes instead of failing the set-up
PIP     := $(BIN)/pip --retries 10 --resume-retries 10
# A matching torch/torchvision pair, installed first and pinned together (see README for other CUDA versions).
TORCH   ?= torch==2.14.1 torchvision==0.29.1
OUT     ?= out/demo

.PHONY: setup demo test lint format bench-pairs train-mini evaluate-mini clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.torch-installed: | $(BIN)/python
	$(PIP) install $(TORCH)
	touch $@

$(VENV)/.icg-installed: pyproject.toml $(VENV)/.torch-installed
	$(PIP) install --quiet -e ".[dev]"
	# recbole only carries the MovieLens-100k files we read; its own dependencies are not wanted.
	$(PIP) install --quiet --no-deps recbole==1.2.1
	touch $@

setup: $(VENV)/.icg-installed

# The main job on the embedded mini preset: 4 held-out items × 3 contrasting real users, offline, on CPU.
demo: setup
	$(BIN)/icg demo --out $(OUT)

# Re-train every mini model and re-package src/icg/assets/mini (resumable; see README for the time it takes).
train-mini: setup
	$(BIN)/icg train mini --work runs/mini

evaluate-mini: setup
	$(BIN)/icg evaluate mini --out results

test: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	PYTHONPATH=src $(BIN)/lint-imports
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	PYTHONPATH=src $(BIN)/lint-imports

format: setup
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench-pairs: setup
	$(BIN)/python bench/pairs_scale.py

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache

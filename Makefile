# Every target bootstraps .venv itself. The CPU build of torch is installed first so that
# pip never pulls a multi-GB CUDA build on machines without a GPU; set TORCH_SPEC to
# choose another build (e.g. TORCH_SPEC=torch for the default wheel with CUDA).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
MINUTES ?= 3

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# .installed-EXTRAS marks a venv holding untok with those extras ("core" = none)
$(VENV)/.installed-%: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" || $(BIN)/python -m pip install -q torch
	$(BIN)/python -m pip install -q -e "$(if $(subst core,,$*),.[$(subst core,,$*)],.)"
	touch $@

# `make demo` is an explicit request to (re)run the demo: it replaces runs/demo
demo: $(VENV)/.installed-core
	$(BIN)/untok demo --minutes $(MINUTES) --force

test: $(VENV)/.installed-dev,data,bench,serve,browser,track
	$(BIN)/python -m pytest tests

lint: $(VENV)/.installed-dev,data,serve
	$(BIN)/ruff check src tests bench

# the whole suite with short budgets (about 20 minutes on 2 cores), written to
# bench/results/quick/ so that the full runs in bench/results/ stay; run a script alone
# (see its --help) for a full run
bench: export UNTOK_BENCH_RESULTS = bench/results/quick
bench: $(VENV)/.installed-dev,data,bench,serve
	$(BIN)/python bench/train_speed.py --steps 2
	$(BIN)/python bench/generate_speed.py --bytes 256
	$(BIN)/python bench/quality.py --budget-minutes 2
	$(BIN)/python bench/core.py --train-minutes 2
	$(BIN)/python bench/blt.py --budget-minutes 1 --entropy-minutes 1 --eval-bytes 32768 \
		--generate-bytes 128
	$(BIN)/python bench/blt_shapes.py --minutes 1 --runs bench/results/quick/runs/blt-shapes \
		--eval-bytes 32768 --generate-bytes 128
	$(BIN)/python bench/mmfree.py --budget-minutes 1 --lengths 1024 8192 --eval-bytes 32768
	$(BIN)/python bench/compress.py --runs bench/results/quick/runs --minutes 2 --val-bytes 32768
	$(BIN)/python bench/distributed.py --steps 16
	$(BIN)/python bench/options.py --minutes 1 --runs bench/results/quick/runs

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache

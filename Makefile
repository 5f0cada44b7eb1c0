# Two commands do all the set-up: `make run` and `make test` create the virtual
# environment in .venv and install dqn_jax into it the first time.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
PORT   ?= 5000

.PHONY: install run test test-slow test-gpu ui bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,sweeps]"
	touch $(STAMP)

install: $(STAMP)

## Train on Breakout with the tutorial's defaults, logging to the embedded MLflow store.
## Extra Hydra overrides: make run ARGS="env=pong memory=small"
run: $(STAMP)
	$(BIN)/python -m dqn_jax $(ARGS)

## The test suite CI runs (no GPU, 2 cores, under 20 minutes).
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not gpu" $(ARGS)

## Learning checks and cluster launchers that take longer.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow" $(ARGS)

## GPU tests (skip themselves where JAX sees no GPU).
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m "gpu" $(ARGS)

## The MLflow UI on the embedded store: http://127.0.0.1:$(PORT)
ui: $(STAMP)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns.db \
		--default-artifact-root $(CURDIR)/mlartifacts --host 127.0.0.1 --port $(PORT)

## Speed benchmarks: ratios measured side by side in one run.
bench: $(STAMP)
	$(BIN)/python experiments/bench.py $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf runs outputs multirun mlruns.db mlartifacts .pytest_cache

## Compare a sweep's runs (curves + table, logged to its parent): make compare ARGS="--sweep-id ID"
.PHONY: compare
compare: $(STAMP)
	$(BIN)/python -m dqn_jax.compare $(ARGS)

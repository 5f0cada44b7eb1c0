# Two commands do all the set-up: `make run` and `make test` create the virtual
# environment in .venv and install dqn_jax into it the first time.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=
PORT   ?= 5000

# The CUDA build of JAX where an NVIDIA GPU answers (`nvidia-smi` works); GPU=1 forces it,
# GPU=0 leaves it out. Changing the choice reinstalls on the next command.
GPU    ?= $(shell nvidia-smi >/dev/null 2>&1 && echo 1 || echo 0)
comma  := ,
EXTRAS := dev,sweeps$(if $(filter 1,$(GPU)),$(comma)cuda)

.PHONY: install run test test-slow test-gpu gpu-check ui bench bench-peers lint clean print-extras FORCE

$(STAMP): pyproject.toml $(VENV)/.extras
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

# Rewritten only when the extras change, so that a new choice reinstalls.
$(VENV)/.extras: FORCE
	@mkdir -p $(VENV)
	@echo "$(EXTRAS)" | cmp -s - $@ || echo "$(EXTRAS)" > $@

install: $(STAMP)

## The extras `make install` installs here: make print-extras [GPU=1]
print-extras:
	@echo "$(EXTRAS)"

## Train on Breakout with the tutorial's defaults, logging to the embedded MLflow store.
## Extra Hydra overrides: make run ARGS="env=pong memory=small"
run: $(STAMP)
	$(BIN)/python -m dqn_jax $(ARGS)

## The test suite CI runs (no GPU, 2 cores). Two workers, a test file each, the longest
## files first (tests/conftest.py): most tests wait on a subprocess's start-up or on one
## busy thread, so two files run side by side, and every subprocess shares one XLA
## compilation cache. 420 tests in 22-32 min here beside two one-core Breakout runs
## (2,200-3,100 CPU-seconds, a third of them the CartPole fixture; 2026-12-03); CI took
## 25.8 min with the install at stop 30.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -m "not slow and not gpu" $(ARGS)

## Learning checks and cluster launchers that take longer.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow" $(ARGS)

## GPU tests (skip themselves where JAX sees no GPU).
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m "gpu" $(ARGS)

## On a GPU machine: the benchmarks and a 10-minute Breakout run, written as dated
## sections into docs/benchmarks.md and docs/results.md (ARGS=--tiny: a small smoke run).
gpu-check: $(STAMP)
	$(BIN)/python experiments/gpu_check.py $(ARGS)

## The MLflow UI on the embedded store, in its "Model training" mode (MLflow 3 opens on
## GenAI traces otherwise): open the address printed for your experiment (its runs and
## their charts), or http://127.0.0.1:$(PORT)/#/experiments?workflowType=machine_learning
## STORE: the project root (paths.root) whose store to show, this folder by default.
STORE ?= $(CURDIR)
ui: $(STAMP)
	$(BIN)/python -m dqn_jax.tracking.ui --root $(STORE) --port $(PORT)
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui \
		--backend-store-uri "$$($(BIN)/python -m dqn_jax.tracking.ui --root $(STORE) --print-uri)" \
		--default-artifact-root $(STORE)/mlartifacts --host 127.0.0.1 --port $(PORT)

## Speed benchmarks: ratios measured side by side in one run.
bench: $(STAMP)
	$(BIN)/python experiments/bench.py $(ARGS)

## dqn_jax's DQN against the JAX DQNs a user would pick instead (SBX, CleanRL, Dopamine), with the same
## work on Breakout: one table of states/s and ratios (docs/benchmarks.md, "Against the
## peers"). Each peer gets its own pinned virtual environment in .venv-peers/<name>, made
## the first time. make bench-peers ARGS=--quick: a few minutes.
PEERS := .venv-peers
PEER_PINS_sbx := sbx-rl==0.28.0 stable-baselines3==2.9.2 tfp-nightly==0.26.0.dev20261027 \
	jax==0.10.2 jaxlib==0.10.2 flax==0.12.8 optax==0.2.8 numpy==2.4.6 torch==2.13.0 \
	gymnasium==1.4.0 ale-py==0.12.1 opencv-python-headless==5.0.0.93
# CleanRL 1.2.0's wheel asks for Python < 3.11 and JAX 0.3; its dqn_atari_jax.py runs as
# published on these pins (experiments/peers/cleanrl_run.py), so it goes in without its
# dependencies. Gymnasium 0.29 (with ale-py 0.9, which ships the ROMs): the script uses its API.
PEER_PINS_cleanrl := jax==0.10.2 jaxlib==0.10.2 flax==0.12.8 optax==0.2.8 numpy==2.4.6 \
	torch==2.13.0 stable-baselines3==2.3.2 gymnasium==0.29.1 ale-py==0.9.1 tensorboard==2.21.0 \
	opencv-python-headless==5.0.0.93
PEER_NODEPS_cleanrl := cleanrl==1.2.0
# Dopamine 4.1.2 without its dependencies, which are listed here instead: its atari_lib
# imports OpenAI's baselines (undeclared; 0.1.5 without its own, only its Atari wrappers are
# needed), its tensorflow-probability (0.25) does not import with JAX 0.10 (tfp-nightly does),
# and TensorFlow 2.21 no longer brings TensorBoard, which Flax's summary writer needs.
PEER_PINS_dopamine := jax==0.10.2 jaxlib==0.10.2 flax==0.12.8 optax==0.2.8 numpy==2.4.6 \
	tensorflow==2.21.0 tensorboard==2.21.0 tf-keras==2.21.0 tf-slim==1.1.0 \
	tfp-nightly==0.26.0.dev20261027 gin-config==0.5.0 absl-py==2.5.1 gym==0.25.2 gymnasium==1.4.0 \
	ale-py==0.12.1 opencv-python-headless==5.0.0.93 pillow==13.0.0 pygame==2.6.1 pandas==3.1.1 \
	python-snappy==0.7.3 tqdm==4.70.1 scipy==1.17.1
PEER_NODEPS_dopamine := dopamine-rl==4.1.2 baselines==0.1.5

bench-peers: $(STAMP) $(PEERS)/sbx/.installed-stamp $(PEERS)/cleanrl/.installed-stamp \
		$(PEERS)/dopamine/.installed-stamp
	$(BIN)/python experiments/bench_peers.py $(ARGS)

# Rewritten only when a peer's pins change, so that a change reinstalls that peer.
.PRECIOUS: $(PEERS)/%/.pins $(PEERS)/%/.installed-stamp
$(PEERS)/%/.pins: FORCE
	@mkdir -p $(@D)
	@echo "$(PEER_PINS_$*) $(PEER_NODEPS_$*)" | cmp -s - $@ || echo "$(PEER_PINS_$*) $(PEER_NODEPS_$*)" > $@

$(PEERS)/%/.installed-stamp: $(PEERS)/%/.pins
	test -x $(@D)/bin/python || $(PYTHON) -m venv $(@D)
	$(@D)/bin/python -m pip install --quiet $(PEER_PINS_$*)
	$(if $(PEER_NODEPS_$*),$(@D)/bin/python -m pip install --quiet --no-deps --ignore-requires-python $(PEER_NODEPS_$*))
	touch $@

## Style (ruff) and the layers (import-linter: the contract in pyproject.toml; README "Layout").
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

clean:
	rm -rf runs outputs multirun mlruns.db mlartifacts .pytest_cache

## Compare a sweep's runs (curves + table, logged to its parent): make compare ARGS="--sweep-id ID"
.PHONY: compare
compare: $(STAMP)
	$(BIN)/python -m dqn_jax.sweeps.compare $(ARGS)

## Pictures and videos of a finished run, written to <run_dir>/analysis and logged to its
## MLflow run: make analyze ARGS="runs/breakout/default"  or  ARGS="run_id=<id> episodes=3 gif=true"
.PHONY: analyze
analyze: $(STAMP)
	$(BIN)/python -m dqn_jax.analyze $(ARGS)

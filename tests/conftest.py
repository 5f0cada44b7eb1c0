"""The suite's shared plumbing: configs composed with Hydra's API, the app in a subprocess,
MLflow clients and runs, a real ``mlflow server``, free ports, waiting for a condition.

Every subprocess runs this checkout's code (``PYTHONPATH``), on the CPU, unbuffered.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from dqn_jax.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small enough for a 2-core CPU: conf/debug/tiny.yaml (a tiny network, a tiny memory, 2 games).
TINY = ["+debug=tiny"]
# The tiny settings on CartPole: episodes short enough to give rewards in 200 states.
CART = [*TINY, "env=cartpole", "network=mlp", "network.dense=[16]"]
BREAKOUT = "dqn_jax/breakout"
CARTPOLE = "dqn_jax/CartPole-v1"


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_config(overrides=(), tmp_path: Path | None = None, to_object: bool = True):
    register_configs()
    extra = [f"paths.root={tmp_path}"] if tmp_path is not None else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*extra, *overrides])
    return OmegaConf.to_object(cfg) if to_object else cfg


# ------------------------------------------------------------------------- subprocesses

# One persistent XLA compilation cache for every subprocess of a suite run: the tiny runs
# compile the same few dozen programs, and compiling was most of a tiny run's time (about
# 10 of 25 seconds). The controller empties it when the suite starts, so an entry cut short
# by a kill -9 test lives one suite run at most (JAX recompiles, with a warning, an entry it
# cannot read); the file lock makes each entry's write and read whole. In-process tests do
# not use it: some count the programs XLA compiles.
JAX_CACHE = ROOT / ".pytest_cache" / "jax-compilation-cache"
JAX_CACHE_ENV = {
    "JAX_COMPILATION_CACHE_DIR": str(JAX_CACHE),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # the tiny programs compile in well under 1 s
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    "JAX_COMPILATION_CACHE_MAX_SIZE": str(2**30),  # a size limit turns on JAX's file lock
}


def pytest_configure(config) -> None:
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist), before any worker
        shutil.rmtree(JAX_CACHE, ignore_errors=True)


def app_env(extra=None) -> dict:
    """The environment of every subprocess: this checkout's code (jobs of a sweep run outside
    it, where an installed copy could win), the CPU, unbuffered output, the suite's compilation cache."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path,
            **JAX_CACHE_ENV, **(extra or {})}


def app_command(args, cwd: Path, module: str = "dqn_jax") -> list[str]:
    root = [f"paths.root={cwd}"] if module == "dqn_jax" else []
    return [sys.executable, "-m", module, *root, *args]


def run_app(args, cwd: Path, timeout: float = 600, env_extra=None) -> subprocess.CompletedProcess:
    """``python -m dqn_jax ARGS`` in a subprocess, everything written under ``cwd``."""
    return subprocess.run(app_command(args, cwd), cwd=cwd, env=app_env(env_extra), capture_output=True,
                          text=True, timeout=timeout)


def run_module(module: str, args, cwd: Path, timeout: float = 300, env_extra=None) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` (dqn_jax.sweeps.compare, dqn_jax.analyze, ...) in a subprocess."""
    return subprocess.run(app_command(args, cwd, module), cwd=cwd, env=app_env(env_extra),
                          capture_output=True, text=True, timeout=timeout)


def start_app(args, cwd: Path, env_extra=None, pipe: bool = False) -> subprocess.Popen:
    """``python -m dqn_jax ARGS`` started in the background. Its output goes to pipes
    (``pipe``: read them with ``communicate``) or to ``cwd/stdout.txt`` and
    ``cwd/stderr.txt`` (a pipe nobody reads would fill and stall it)."""
    command, env = app_command(args, cwd), app_env(env_extra)
    if pipe:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    with open(cwd / "stdout.txt", "w") as out, open(cwd / "stderr.txt", "w") as err:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err)


def tail(result) -> str:
    """The end of a finished subprocess's output, for an assertion's message."""
    return (result.stdout or "")[-3000:] + (result.stderr or "")[-3000:]


def wait_for(condition, what: str, timeout: float = 300, process: subprocess.Popen | None = None,
             every: float = 0.2) -> None:
    """Poll ``condition`` every ``every`` s until it holds; fail after ``timeout`` or if
    ``process`` ends first (a short ``every`` catches a moment that passes, e.g. a save)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert process is None or process.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV log (rewards.csv, q_values.csv); [] before it exists."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def checkpoint_steps(folder: Path) -> list[int]:
    """The complete checkpoints in ``folder`` (a save in progress is ``<n>.orbax-checkpoint-tmp``)."""
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def restore_state(root: Path, checkpoints: Path, overrides=(), step: int | None = None) -> tuple:
    """(algorithm state, counters as ints) of a checkpoint (the newest by default) of a
    ``TINY`` run under ``root``, restored whole into the state its config builds."""
    from dqn_jax import algorithms  # JAX and the games load only for the tests that restore
    from dqn_jax.envs import make_games
    from dqn_jax.runner.checkpoints import Checkpointer

    cfg = compose_config([*TINY, *overrides], root)
    games = make_games(cfg.env, 2, 0)
    try:
        parts = algorithms.make_parts(cfg, games, 0)
        fresh = algorithms.build(cfg, parts, games).init(parts.train_state)
    finally:
        games.close()
    with Checkpointer(checkpoints) as checkpointer:
        state, _, counters = checkpointer.restore(fresh, step)
    return state, {k: int(v) for k, v in counters.items()}


def restore_newest(root: Path, checkpoints: Path, overrides=()) -> tuple:
    """(train state, counters as ints) of the newest checkpoint of a ``TINY`` run under ``root``."""
    state, counters = restore_state(root, checkpoints, overrides)
    return state.train, counters


def run_and_resume(overrides, root: Path) -> tuple:
    """A ``TINY`` Breakout run to 400 states, then the same command to 600, which resumes:
    (the checkpoint steps kept, the algorithm state and counters of the one at 600)."""
    args = [*TINY, *overrides]
    first = run_app([*args, "steps=400"], cwd=root)
    assert first.returncode == 0, first.stderr
    second = run_app([*args, "steps=600"], cwd=root)
    assert second.returncode == 0, second.stderr
    assert "resuming from" in second.stdout and "400 states" in second.stdout
    checkpoints = root / "runs" / "breakout" / "default" / "checkpoints"
    return (checkpoint_steps(checkpoints), *restore_state(root, checkpoints, [*overrides, "steps=600"], 600))


# ------------------------------------------------------------------------------ MLflow

def client_for(root_or_uri) -> MlflowClient:
    """A client of the embedded store under a project root, or of a tracking URI."""
    uri = str(root_or_uri)
    return MlflowClient(uri if "://" in uri else f"sqlite:///{uri}/mlruns.db")


def runs_of(client: MlflowClient, experiment: str = BREAKOUT) -> tuple[list, list]:
    """(training runs, test runs) of an experiment outside a sweep, each oldest first (a
    test run is a child of the training run it tested)."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"the experiment {experiment} was not created"
    runs = sorted(client.search_runs([exp.experiment_id]), key=lambda r: r.info.start_time)
    train = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    test = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return train, test


def sweep_runs(client: MlflowClient, experiment: str = CARTPOLE):
    """(the one parent run of a sweep, its children by job number)."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, "the experiment was not created"
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dqn_jax.sweep") == "true"]
    assert len(parents) == 1, [r.info.run_name for r in runs]
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, sorted(children, key=lambda r: int(r.data.tags["dqn_jax.job_num"]))


def history(client: MlflowClient, run_id: str, key: str) -> set[tuple[int, float]]:
    """A metric's history as (step, value) pairs: MLflow may keep one of two equal values
    logged at the same step and millisecond, so counts of rows are not compared."""
    return {(m.step, m.value) for m in client.get_metric_history(run_id, key)}


# ------------------------------------------------------------------ servers and ports

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    """True when ``url`` answers HTTP 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def background_process(command, log_path: Path, what: str, *, ready, stop_timeout: float, env=None):
    """Start ``command`` in its own process group, wait until ``ready()``, stop it after."""
    log = open(log_path, "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not come up: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


class MlflowServer:
    """``mlflow server`` on localhost, a fixed port, an SQLite store and proxied artifacts;
    it can be stopped (killed at once, as in a crash) and started again."""

    def __init__(self, store: Path):
        self.store, self.port = store, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None
        store.mkdir(parents=True, exist_ok=True)

    def start(self) -> MlflowServer:
        command = [str(Path(sys.executable).with_name("mlflow")), "server",
                   "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}",
                   "--artifacts-destination", str(self.store / "artifacts"),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        log = open(self.store / "server.log", "a")  # noqa: SIM115 - the server's for its life
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        wait_for(lambda: answers(f"{self.url}/health"), "mlflow server", timeout=120, process=self.process)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path / "server").start()
    yield server
    server.stop()


# ------------------------------------------------------------------------------ order

# The files that take longest, longest first (seconds of test time each, measured with
# --durations beside two one-core Breakout runs, the compilation cache on, 2026-12-03).
# `make test` hands whole files to two xdist workers (--dist loadfile) in collection order
# (--no-loadscope-reorder: by default xdist sends the files with the most tests first, which
# started the CartPole fixture, a third of the suite's CPU time, 14 minutes in). Starting
# the long ones first leaves the short ones to fill in at the end instead of one long file
# running alone at the end.
LONGEST_FIRST = [
    "test_learning.py",  # 620: four CartPole recipes learning side by side
    "test_long_runs.py",  # 440
    "test_sweeps.py",  # 225
    "test_app.py",  # 185
    "test_stop_signals.py",  # 175
    "test_spool.py",  # 165
    "test_dqn.py",  # 145
    "test_sweep_dqn.py",  # 100: a tiny Breakout run and its resume
    "test_learners.py",  # 70
    "test_recipes.py",  # 70
    "test_compare.py",  # 65
    "test_probe.py",  # 55
    "test_learner.py",  # 50
    "test_analyze.py",  # 45
    "test_divergence.py",  # 30
    "test_slurm.py",  # 15
]


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files keep their order

"""One home each: the store's location and client, the search of every experiment
(dqn_jax.tracking.store), what an exception means to a run (dqn_jax.tracking.errors), and
a sweep's job's end (dqn_jax.sweeps.jobs). No MLflow store is made here but in the last test."""

from __future__ import annotations

import shutil
import subprocess
from types import SimpleNamespace

import pytest
import requests
from omegaconf import OmegaConf

from dqn_jax import config
from dqn_jax.sweeps import jobs
from dqn_jax.tracking import errors, store, ui
from tests.conftest import ROOT


def make_cfg(**paths):
    """The config's paths (with their interpolations) and logger.tracking_uri."""
    cfg = OmegaConf.create({"paths": OmegaConf.structured(config.PathsConfig), "logger": {"tracking_uri": None}})
    for key, value in paths.items():
        cfg.paths[key] = value
    return cfg


def test_the_embedded_store_is_one_file_under_the_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store.STORE_FILE == "mlruns.db"
    assert store.store_uri("proj") == f"sqlite:///{tmp_path / 'proj' / 'mlruns.db'}"
    assert store.default_uri() == f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert store.default_uri("proj") == store.store_uri("proj")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert store.default_uri("proj") == "http://127.0.0.1:5000"
    assert store.sqlite_file(store.store_uri("proj")) == tmp_path / "proj" / "mlruns.db"
    assert store.sqlite_file("http://127.0.0.1:5000") is None


def test_a_runs_store_from_its_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = make_cfg(root="proj")
    assert store.tracking_uri(cfg) == f"sqlite:///{tmp_path / 'proj' / 'mlruns.db'}"
    cfg.logger.tracking_uri = "http://127.0.0.1:5000"
    assert store.tracking_uri(cfg) == "http://127.0.0.1:5000"


def test_a_finished_runs_relative_store_is_found_from_its_directory(tmp_path, monkeypatch):
    """paths.root=. when it ran from the project: read back from elsewhere, the store is the
    project's (runs/<game>/<name> under it), not one in the current directory."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    run_dir = project / "runs" / "breakout" / "default"
    run_dir.mkdir(parents=True)
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = make_cfg(root=".", runs="./runs", mlflow_db="./mlruns.db")
    assert store.tracking_uri(cfg, run_dir) == f"sqlite:///{project / 'mlruns.db'}"
    assert store.tracking_uri(cfg) == f"sqlite:///{elsewhere / 'mlruns.db'}"  # a run of this directory
    (elsewhere / "mlruns.db").touch()  # there is one here: it is the one
    assert store.tracking_uri(cfg, run_dir) == f"sqlite:///{elsewhere / 'mlruns.db'}"
    absolute = make_cfg(mlflow_db=str(tmp_path / "db" / "x.db"))
    assert store.tracking_uri(absolute, run_dir) == f"sqlite:///{tmp_path / 'db' / 'x.db'}"


def test_a_client_for_a_uri_or_a_config_and_none_for_a_missing_file(tmp_path):
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    assert store.client(missing, existing=True) is None
    assert not (tmp_path / "none.db").exists()
    made = store.client(missing)
    assert made.tracking_uri == missing
    assert store.client(make_cfg(root=str(tmp_path))).tracking_uri == f"sqlite:///{tmp_path / 'mlruns.db'}"
    assert store.client("http://127.0.0.1:1", existing=True).tracking_uri == "http://127.0.0.1:1"


class FakeClient:
    """As many experiments as asked; search_runs answers one run per experiment given."""

    def __init__(self, experiments: int):
        self.experiments = [SimpleNamespace(experiment_id=str(i)) for i in range(experiments)]
        self.calls: list[tuple[int, str, int]] = []

    def search_experiments(self):
        return self.experiments

    def search_runs(self, ids, filter_string, max_results):
        self.calls.append((len(ids), filter_string, max_results))
        return [f"run of {i}" for i in ids]


def test_search_runs_asks_every_experiment_at_most_100_at_a_time():
    client = FakeClient(250)
    runs = store.search_runs(client, "tags.a = 'b'")
    assert runs == [f"run of {i}" for i in range(250)]
    assert client.calls == [(100, "tags.a = 'b'", 5000), (100, "tags.a = 'b'", 5000), (50, "tags.a = 'b'", 5000)]
    assert store.search_runs(FakeClient(0), "x") == []


def test_a_runs_status_from_its_exception():
    assert errors.run_status(None) == "FINISHED"
    assert errors.run_status(KeyboardInterrupt()) == "KILLED"
    assert errors.run_status(errors.RunStopped("saved")) == "KILLED"
    assert errors.run_status(jobs.JobStopped("saved")) == "KILLED"  # a sweep job stopped by a signal
    assert errors.run_status(ValueError("bad")) == "FAILED"
    assert errors.run_status(SystemExit(2)) == "FAILED"


def _raised_from(outer: BaseException, inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as cause:
            raise outer from cause
    except BaseException as error:
        return error


def test_one_table_of_reasons_read_from_the_whole_chain():
    wrapped = _raised_from(RuntimeError("API request failed"), ConnectionError("[Errno 111] Connection refused"))
    assert errors.reason(wrapped) == "connection refused"
    assert errors.is_transient(wrapped)
    timeout = RuntimeError("Read timed out. (read timeout=5)")
    assert errors.reason(timeout) == "timed out"
    assert errors.reason(timeout, timed_out="no answer within 5 s") == "no answer within 5 s"
    assert errors.reason(RuntimeError("failed with error code 401 != 200")) == (
        "HTTP 401: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    assert errors.reason(RuntimeError("database is locked")) == "database is locked"
    assert errors.reason(RuntimeError("Temporary failure in name resolution")) == "unknown host"
    assert errors.reason(ValueError("x" * 400 + "\nmore")) == "ValueError: " + "x" * 288
    assert errors.reason(ValueError("x" * 400), limit=20) == "ValueError: xxxxxxxx"
    assert errors.is_transient(requests.exceptions.ReadTimeout())
    assert not errors.is_transient(ValueError("RESOURCE_DOES_NOT_EXIST"))
    assert [type(e) for e in errors.chain(wrapped)] == [RuntimeError, ConnectionError]


def test_a_jobs_error_comes_from_hydras_public_return_value(capsys):
    from hydra.core.utils import JobReturn, JobStatus

    error = ValueError("memory.size=-1 is out of range")
    assert jobs.job_error(JobReturn(status=JobStatus.FAILED, _return_value=error)) is error
    assert jobs.job_error(JobReturn(status=JobStatus.COMPLETED, _return_value=3.0)) is None
    assert capsys.readouterr().err == ""  # Hydra's own line for it is written by its sweeper, once
    assert jobs.error_line(error) == "ValueError: memory.size=-1 is out of range"
    assert jobs.error_line(KeyError()) == "KeyError"


def test_is_multirun_outside_hydra_and_from_a_jobs_config():
    from hydra.types import RunMode

    assert jobs.is_multirun() is False  # no Hydra app is running
    assert jobs.is_multirun(SimpleNamespace(mode=RunMode.MULTIRUN)) is True
    assert jobs.is_multirun(SimpleNamespace(mode=RunMode.RUN)) is False


def test_the_error_line_of_a_sweeps_store_check_keeps_one_prefix():
    from dqn_jax.__main__ import one_line

    assert one_line("dqn_jax: error: cannot reach the MLflow tracking server at x\n") == (
        "dqn_jax: error: cannot reach the MLflow tracking server at x")
    assert one_line("Could not override 'oops'.\n") == "dqn_jax: error: Could not override 'oops'."


def test_make_ui_shows_the_store_the_package_names(tmp_path, capsys):
    if shutil.which("make") is None:
        pytest.skip("needs GNU make")
    assert ui.main(["--root", str(tmp_path), "--print-uri"]) == 0
    assert capsys.readouterr().out == f"{store.store_uri(tmp_path)}\n"
    commands = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(ROOT), "ui", f"STORE={tmp_path}"],
                              capture_output=True, text=True, timeout=60).stdout
    assert f"-m dqn_jax.tracking.ui --root {tmp_path} --print-uri" in commands
    assert "mlruns.db" not in commands


def test_the_store_file_is_the_configs_default():
    assert make_cfg(root="/p").paths.mlflow_db == f"/p/{store.STORE_FILE}"

"""dqn_jax.tracking against a real MLflow SQLite store in a temporary directory."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from dqn_jax import config, tracking
from dqn_jax.sweeps import PARENT_RUN_ENV, child_run_name, sweep_parent_run_id
from dqn_jax.tracking import (
    MlflowTracker,
    NullTracker,
    flatten_config,
    read_run,
    read_run_id,
    start_tracker,
    tracking_uri,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One store for the module: creating an MLflow database takes seconds."""
    return tmp_path_factory.mktemp("project")


def make_cfg(root: Path, **overrides):
    cfg = OmegaConf.structured(config.Config)
    cfg.algorithm = OmegaConf.structured(config.HvassConfig)
    cfg.paths.root = str(root)
    for dotted, value in overrides.items():
        OmegaConf.update(cfg, dotted.replace("__", "."), value)
    return cfg


@pytest.fixture
def client(root) -> MlflowClient:
    return MlflowClient(tracking_uri(make_cfg(root)))


def test_tracking_uri_is_absolute_sqlite_unless_configured(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking_uri(make_cfg(Path("proj"))) == f"sqlite:///{tmp_path / 'proj' / 'mlruns.db'}"
    server = make_cfg(Path("proj"), logger__tracking_uri="http://127.0.0.1:5000")
    assert tracking_uri(server) == "http://127.0.0.1:5000"


def test_flatten_config_gives_dotted_string_params(root):
    cfg = make_cfg(root, name="flat")
    flat = flatten_config(cfg)
    assert flat["memory.size"] == "200000"
    assert flat["schedule.epsilon.end"] == "0.1"
    assert flat["network.conv_features"] == "[16, 32, 64]"
    assert flat["env.num_envs"] == "None"
    assert flat["paths.mlflow_db"] == f"{root}/mlruns.db"  # interpolations resolved
    assert all(isinstance(v, str) for v in flat.values())
    assert flatten_config(config.Config(algorithm=config.HvassConfig())) == flatten_config(make_cfg("."))  # a dataclass too


def test_params_metrics_and_artifacts_reach_the_store(root, client, tmp_path):
    cfg = make_cfg(root, name="full", logger__flush_seconds=3600.0)  # no timed flush here
    tracker = start_tracker(cfg, tmp_path / "run", run_name="breakout-full", tags={"k": "v"})
    assert isinstance(tracker, MlflowTracker)
    assert read_run_id(tmp_path / "run") == tracker.run_id

    params = {**flatten_config(cfg), **{f"extra.p{i}": i for i in range(60)}, "long": "x" * 7000}
    assert len(params) > 100  # more than one log_batch of params
    tracker.log_params(params)

    for step in range(1, 1201):  # 2400 values: three log_batch calls of at most 1000
        tracker.log_metrics({"episode/score": np.float32(step % 7), "episode/count": step},
                            step=step * 8)
    # queued, not sent: log_metrics did no store I/O
    assert client.get_metric_history(tracker.run_id, "episode/score") == []

    (tmp_path / "rewards.csv").write_text("episode,score\n1,2\n")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "data.bin").write_bytes(b"\x00" * 10)
    tracker.log_artifact(tmp_path / "rewards.csv")
    tracker.log_artifacts(tmp_path / "ckpt", "checkpoints/8")
    tracker.log_text("hello", "notes/summary.txt")
    tracker.finish()
    assert tracker.error is None

    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "breakout-full"
    assert run.data.tags["k"] == "v"
    assert run.data.tags["dqn_jax.run_dir"] == str((tmp_path / "run").resolve())
    assert run.data.params["memory.size"] == "200000"
    assert run.data.params["extra.p59"] == "59"
    assert len(run.data.params["long"]) == 6000
    history = client.get_metric_history(tracker.run_id, "episode/score")
    assert len(history) == 1200
    assert sorted((m.step, m.value) for m in history)[:2] == [(8, 1.0), (16, 2.0)]

    artifacts = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert artifacts == {"rewards.csv", "checkpoints", "notes"}
    assert [a.path for a in client.list_artifacts(tracker.run_id, "checkpoints/8")] == [
        "checkpoints/8/data.bin"]
    # the embedded store keeps artifacts in the project directory
    stored = root / "mlartifacts" / "dqn_jax_breakout" / tracker.run_id / "artifacts"
    assert (stored / "notes" / "summary.txt").read_text() == "hello"


def test_background_thread_sends_without_flush(root, client, tmp_path):
    tracker = start_tracker(make_cfg(root, logger__flush_seconds=0.05), tmp_path,
                            run_name="timed")
    tracker.log_metrics({"loss": 0.5}, step=3)
    deadline = time.monotonic() + 20
    while not client.get_metric_history(tracker.run_id, "loss") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "loss")] == [
        (3, 0.5)]
    assert tracker.send_cpu_seconds > 0  # the sender's cost is accounted (make bench reports it)
    tracker.finish()


def test_resume_reopens_the_same_run(root, client, tmp_path):
    cfg = make_cfg(root, name="resumed")
    first = start_tracker(cfg, tmp_path, run_name="r")
    first.log_metrics({"train/loss": 1.0}, step=100)
    first.finish("KILLED")
    assert client.get_run(first.run_id).info.status == "KILLED"

    again = start_tracker(cfg, tmp_path, run_name="r", tags={"dqn_jax.resumed_at_states": 100})
    assert again.run_id == first.run_id
    assert client.get_run(again.run_id).info.status == "RUNNING"
    again.log_metrics({"train/loss": 0.5}, step=200)
    again.finish()
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dqn_jax.resumed_at_states"] == "100"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [100, 200]

    fresh = start_tracker(cfg, tmp_path, run_name="r", resume=False)
    assert fresh.run_id != first.run_id and read_run_id(tmp_path) == fresh.run_id
    fresh.finish()

    (tmp_path / "mlflow_run_id").write_text("0123456789abcdef0123456789abcdef\n")  # another store's
    other = start_tracker(cfg, tmp_path, run_name="r")
    assert other.run_id != "0123456789abcdef0123456789abcdef"
    other.finish()


def test_a_resumed_job_of_a_relaunched_sweep_moves_to_its_new_parent(root, client, tmp_path):
    cfg = make_cfg(root, name="job")
    old_parent, new_parent = (start_tracker(cfg, tmp_path / name, run_name=name) for name in ("old", "new"))
    job = start_tracker(cfg, tmp_path / "job", run_name="job", parent_run_id=old_parent.run_id)
    job.finish("KILLED")
    again = start_tracker(cfg, tmp_path / "job", run_name="job", parent_run_id=new_parent.run_id)
    again.finish()
    assert again.run_id == job.run_id
    assert client.get_run(job.run_id).data.tags["mlflow.parentRunId"] == new_parent.run_id
    old_parent.finish()
    new_parent.finish()


def test_a_store_that_does_not_answer_is_not_taken_for_a_run_it_does_not_have(client, monkeypatch):
    """A resume reads its run back: a store without it gives None (a new run starts); one
    that does not answer is asked again, then ends the command with one line, so a second
    run does not split the history (the old code took every error for a missing run)."""
    assert read_run(client, "0" * 32) is None and read_run(client, None) is None
    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setattr(tracking, "READ_RETRY_SECONDS", (0.2, 0.2))
    start = time.monotonic()
    with pytest.raises(config.ConfigError) as raised:
        read_run(MlflowClient(f"http://127.0.0.1:{port}"), "0" * 32)
    assert time.monotonic() - start >= 0.4  # asked three times, waiting in between
    message = str(raised.value)
    assert "\n" not in message and f"run {'0' * 32} was read back" in message and "connection refused" in message


def test_failed_status_parent_and_context_manager(root, client, tmp_path):
    cfg = make_cfg(root)
    parent = start_tracker(cfg, tmp_path / "parent", run_name="parent")
    with pytest.raises(RuntimeError), start_tracker(
            cfg, tmp_path / "child", run_name="child", parent_run_id=parent.run_id) as child:
        raise RuntimeError("training crashed")
    run = client.get_run(child.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["mlflow.parentRunId"] == parent.run_id
    with pytest.raises(ValueError, match="FINISHED, FAILED, KILLED"):
        parent.finish("DONE")
    parent.finish("FAILED")
    parent.finish("FINISHED")  # a second finish changes nothing
    assert client.get_run(parent.run_id).info.status == "FAILED"


def test_store_failures_are_reported_once_and_never_raise(root, caplog):
    tracker = MlflowTracker(tracking_uri(make_cfg(root)), "f" * 32, flush_seconds=3600)
    with caplog.at_level(logging.WARNING, logger="dqn_jax.tracking"):
        tracker.log_metrics({"a": 1.0, "b": 2.0}, step=1)
        tracker.flush()
        tracker.log_metrics({"a": 1.0}, step=2)
        tracker.set_tags({"x": "y"})
        tracker.finish("FAILED")
    assert tracker.error is not None
    assert tracker.dropped_metrics == 3
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2  # the first failure, then the summary at finish
    assert "3 metric values lost" in warnings[1]


def test_a_bad_metric_name_costs_only_its_value(root, client, tmp_path):
    tracker = start_tracker(make_cfg(root, logger__flush_seconds=3600.0), tmp_path, run_name="n")
    tracker.log_metrics({"bad name!": 1.0, "../up": 1.0, "good/name": 2.0}, step=5)
    tracker.log_metrics({"not/a/scalar": np.ones(3)}, step=6)  # fails later, in the sender
    tracker.finish()
    assert tracker.dropped_metrics == 3
    assert [m.value for m in client.get_metric_history(tracker.run_id, "good/name")] == [2.0]


def test_null_tracker_does_nothing(tmp_path):
    cfg = make_cfg(tmp_path, logger__name="none")
    tracker = start_tracker(cfg, tmp_path / "run", run_name="off")
    assert isinstance(tracker, NullTracker) and tracker.run_id is None
    tracker.log_params({"a": 1})
    tracker.log_metrics({"m": 1.0}, step=1)
    tracker.set_tags({"t": 1})
    tracker.log_artifact(tmp_path / "missing.txt")
    tracker.log_artifacts(tmp_path)
    tracker.log_text("x", "x.txt")
    tracker.flush()
    tracker.finish("FAILED")
    assert list(tmp_path.iterdir()) == []  # no store, no run id file


def test_multirun_gets_one_parent_run(root, client, tmp_path):
    """A real Hydra multirun with the sweep callback: a parent run, a child per job."""
    app = tmp_path / "app.py"
    app.write_text(textwrap.dedent("""
        from pathlib import Path
        import hydra
        from hydra.core.hydra_config import HydraConfig
        from dqn_jax import sweeps, tracking
        from dqn_jax.config import register_configs

        register_configs()

        @hydra.main(version_base=None, config_path=None, config_name="config_schema")
        def main(cfg):
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            with tracking.start_tracker(cfg, run_dir, run_name=sweeps.child_run_name(f"seed{cfg.seed}"),
                                        parent_run_id=sweeps.sweep_parent_run_id()) as t:
                t.log_metrics({"seed": cfg.seed}, step=0)

        main()
    """))
    cfg = make_cfg(root, logger__experiment="sweeps")
    done = subprocess.run(
        [sys.executable, str(app), "-m", "seed=0,1", f"paths.root={root}",
         "logger.experiment=sweeps", f"hydra.sweep.dir={tmp_path / 'multirun'}",
         "+hydra.callbacks.parent._target_=dqn_jax.sweeps.SweepParentCallback"],
        cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = client.get_experiment_by_name(config.experiment_name(cfg))
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("dqn_jax.sweep") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.info.run_name for r in children) == ["seed=0", "seed=1"]  # what they vary
    parent = parents[0]
    assert "seed=0,1" in parent.data.params["sweep.overrides"]
    for child in children:  # each job's own run, tagged with the sweep it belongs to
        assert child.data.tags["dqn_jax.sweep_id"] == parent.data.tags["dqn_jax.sweep_id"]
        assert child.data.metrics["seed"] == float(child.info.run_name.removeprefix("seed="))
    assert child_run_name("breakout-default") == "breakout-default"  # not in a sweep's job


def test_sweep_parent_run_id_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv(PARENT_RUN_ENV, "abc")
    assert sweep_parent_run_id() == "abc"
    monkeypatch.setenv(PARENT_RUN_ENV, "")
    assert sweep_parent_run_id() is None


def test_the_ui_addresses_open_the_training_runs(root, client, tmp_path, capsys):
    """MLflow 3's UI opens an experiment on GenAI traces unless told workflowType=machine_learning
    (checked in headless Chromium: the runs and their charts; see docs/tracking.md)."""
    from dqn_jax.tracking import ui

    tracker = start_tracker(make_cfg(root, logger__experiment="ui-check"), tmp_path, run_name="r")
    tracker.finish()
    experiment = client.get_experiment_by_name("ui-check")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert (experiment.experiment_id, "ui-check") in ui.experiments(root / "mlruns.db")
    assert ui.experiments(tmp_path / "none.db") == []
    assert ui.main(["--root", str(root), "--port", "5001"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("MLflow UI (training runs): "
                              "http://127.0.0.1:5001/#/experiments?workflowType=machine_learning\n")
    assert (f"  ui-check: http://127.0.0.1:5001/#/experiments/{experiment.experiment_id}/runs"
            "?workflowType=machine_learning&compareRunsMode=CHART\n") in printed

"""dqn_jax.runner.resume: a resumed run's logs hold each step once, on a real MLflow store."""

from __future__ import annotations

import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from dqn_jax import tracking
from dqn_jax.runner import resume


@pytest.fixture
def store(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    experiment = client.create_experiment("dqn_jax/breakout", artifact_location=(tmp_path / "art").as_uri())
    return client, experiment


def crashed_run(client, experiment, run_dir, steps=(100, 200, 300, 400, 500)):
    """A run as a crash leaves it: RUNNING, with metrics past its last checkpoint."""
    run = client.create_run(experiment, run_name="breakout-default", tags={"dqn_jax.run_dir": str(run_dir)})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param("memory.size", "256"), Param("seed", "3")])
    metrics = [Metric("episode/score", float(s) / 100, 1_000 + s, s) for s in steps]
    metrics += [Metric("episode/count", float(i + 1), 1_000 + s, s) for i, s in enumerate(steps)]
    metrics += [Metric("cycle/loss", 0.5, 2_000, 300), Metric("cycle/loss", 0.25, 2_001, 450)]
    client.log_batch(run_id, metrics=metrics)
    tracking.write_run_id(run_dir, run_id)
    child = client.create_run(experiment, tags={"mlflow.parentRunId": run_id}).info.run_id
    return run_id, child


def history(client, run_id, key):
    return [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)]


def test_history_past_the_checkpoint_moves_to_a_run_that_ends_there(store, tmp_path):
    client, experiment = store
    run_dir = tmp_path / "runs" / "breakout" / "default"
    old_id, child = crashed_run(client, experiment, run_dir)
    new_id = resume.restart_history(client, run_dir, 300)
    assert new_id != old_id and tracking.read_run_id(run_dir) == new_id
    for key in ("episode/score", "episode/count", "cycle/loss"):
        expected = [h for h in history(client, old_id, key) if h[0] <= 300]
        assert history(client, new_id, key) == expected, key  # values, steps and times kept
    assert [s for s, *_ in history(client, new_id, "episode/count")] == [100, 200, 300]
    new = client.get_run(new_id)
    assert new.data.params == {"memory.size": "256", "seed": "3"}
    assert new.data.tags["dqn_jax.run_dir"] == str(run_dir)
    assert new.data.tags["mlflow.runName"] == "breakout-default"
    assert new.data.tags[resume.RESTARTED_TAG] == f"{old_id} at 300 states"
    old = client.get_run(old_id)
    assert old.info.lifecycle_stage == "deleted" and old.info.status == "KILLED"
    assert old.data.tags[resume.SUPERSEDED_TAG] == new_id
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == new_id
    assert resume.restart_history(client, run_dir, 300) == new_id  # nothing more to do


def test_a_history_that_ends_at_the_checkpoint_continues_in_the_same_run(store, tmp_path):
    client, experiment = store
    run_dir = tmp_path / "run"
    old_id, _ = crashed_run(client, experiment, run_dir)
    assert resume.restart_history(client, run_dir, 500) == old_id
    assert client.get_run(old_id).info.lifecycle_stage == "active"
    assert len(client.search_runs([experiment])) == 2  # the run and its child, no copy
    assert resume.restart_history(client, tmp_path / "elsewhere", 500) is None

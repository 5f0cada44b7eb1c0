"""Resuming a run: its logs as if it had never crashed.

A run resumes from its last complete checkpoint, at ``states`` states. What it logged
after that point (a crash, ``kill -9``, a power cut) is played again, so it must go:

* ``rewards.csv`` and ``q_values.csv`` are cut back to ``states`` (:func:`logs.cut_after`);
* MLflow keeps every value ever logged to a metric and has no call to remove one, so
  when the run's history reaches past ``states`` the resumed run continues in a new
  MLflow run holding the params, tags and every metric value up to ``states``. The
  crashed run is tagged ``dqn_jax.superseded_by`` and deleted the MLflow way (it stays
  in the store's trash, restorable, until ``mlflow gc``); the run directory's
  ``mlflow_run_id`` names the new one. A run that stopped cleanly has nothing past its
  checkpoint, and simply continues in the same MLflow run.

What was logged up to a checkpoint is in the run directory's unsent file before the
checkpoint is written (``Tracker.persist``), and a resume sends what of it the store has
not got, so nothing up to ``states`` is missing.
"""

from __future__ import annotations

from pathlib import Path

from dqn_jax import tracking
from dqn_jax.runner import logs

SUPERSEDED_TAG = "dqn_jax.superseded_by"
RESTARTED_TAG = "dqn_jax.history_restarted_from"
LOG_FILES = ("rewards.csv", "q_values.csv")


def cut_logs(run_dir: Path, states: int) -> int:
    """Cut the run's CSV logs back to ``states``; returns the rows dropped."""
    return sum(logs.cut_after(Path(run_dir) / name, states) for name in LOG_FILES)


def _latest_step(run) -> int:
    return max((metric.step for metric in run.data.to_proto().metrics), default=-1)


def _copy_until(client, run, states: int) -> str:
    """A new run in the same experiment with ``run``'s params, tags and metrics up to ``states``."""
    from mlflow.entities import Param

    tags = {k: v for k, v in run.data.tags.items() if k != SUPERSEDED_TAG}
    tags[RESTARTED_TAG] = f"{run.info.run_id} at {states} states"
    new_id = client.create_run(run.info.experiment_id, start_time=run.info.start_time, tags=tags,
                               run_name=run.info.run_name).info.run_id
    params = [Param(k, v) for k, v in run.data.params.items()]
    for start in range(0, len(params), tracking.PARAMS_PER_BATCH):
        client.log_batch(new_id, params=params[start:start + tracking.PARAMS_PER_BATCH])
    for key in run.data.metrics:
        kept = [m for m in client.get_metric_history(run.info.run_id, key) if m.step <= states]
        for start in range(0, len(kept), tracking.METRICS_PER_BATCH):
            client.log_batch(new_id, metrics=kept[start:start + tracking.METRICS_PER_BATCH])
    return new_id


def restart_history(client, run_dir: Path, states: int) -> str | None:
    """Make the run directory's MLflow run end at ``states``; returns the run id to resume.

    Nothing changes (and the same id comes back) when the history does not reach past
    ``states``; None when the directory has no MLflow run in this store.
    """
    run_id = tracking.read_run_id(run_dir)
    run = tracking.read_run(client, run_id)
    if run is None:
        return None
    if run.info.lifecycle_stage != "active" or _latest_step(run) <= states:
        return run_id
    new_id = _copy_until(client, run, states)
    tracking.write_run_id(Path(run_dir), new_id)
    for child in client.search_runs([run.info.experiment_id],
                                    filter_string=f"tags.mlflow.parentRunId = '{run_id}'"):
        client.set_tag(child.info.run_id, "mlflow.parentRunId", new_id)  # its test runs
    client.set_tag(run_id, SUPERSEDED_TAG, new_id)
    client.set_terminated(run_id, "KILLED")
    client.delete_run(run_id)
    return new_id

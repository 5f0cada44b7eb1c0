"""Sweeps (Hydra multiruns) in MLflow: one parent run per sweep, a tagged child per job.

:class:`SweepParentCallback` is registered in ``conf/config.yaml`` (``hydra.callbacks``).
In the launching process it opens the parent run when the multirun starts and closes it
when the multirun ends; if the sweeper raises (Hydra re-raises a batch's first failed
job after the whole batch has run) the parent is closed at exit, FAILED, with one line on
stderr counting the failed jobs. In each job's process, after the task, it tags the job's
own run (``dqn_jax.overrides``, ``dqn_jax.job_num``, ``dqn_jax.sweep_id``) and, for a job
that failed before opening a run (a config value rejected for that job only), opens and
closes a FAILED child holding the error, so that every job has its run.

The jobs find the parent run with :func:`sweep_parent_run_id` and name their runs by
what they vary with :func:`child_run_name` (:mod:`dqn_jax.sweeps.jobs`). A launch killed
with ``kill -9`` leaves its parent RUNNING: a relaunch in the same ``hydra.sweep.dir``
closes it (and its orphaned children) KILLED, with a tag saying why (:mod:`dqn_jax.tracking.stale`).

:class:`JobResources` (added by ``hydra/launcher=local_parallel``) gives each parallel job
on one machine its share of the cores and of the GPU's memory (:mod:`dqn_jax.sweeps.job_resources`).
``dqn-jax-compare`` draws a sweep's runs side by side (:mod:`dqn_jax.sweeps.compare`).

May import: ``dqn_jax.runner``, ``dqn_jax.tracking`` and everything below them; never the
analysis or the application.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dqn_jax import tracking
from dqn_jax.config import ConfigError
from dqn_jax.runner import interrupts
from dqn_jax.sweeps import compare
from dqn_jax.sweeps import jobs as sweep_jobs
from dqn_jax.sweeps.job_resources import JobResources  # noqa: F401 - hydra/launcher=local_parallel names it here
from dqn_jax.sweeps.jobs import (  # noqa: F401 - PARENT_RUN_ENV, child_run_name and job_overrides: used by others
    PARENT_RUN_ENV,
    _common_overrides,
    _cut,
    child_run_name,
    is_multirun,
    job_overrides,
    sweep_id,
    sweep_parent_run_id,
)
from dqn_jax.tracking import stale, store

log = logging.getLogger(__name__)

JOB_TAG = "dqn_jax.jobs."  # parent tags dqn_jax.jobs.<num> = COMPLETED | FAILED: <error> | KILLED: <why>
INTERRUPTED_FILE = sweep_jobs.INTERRUPTED_FILE  # in the sweep directory after a stop signal


# ---------------------------------------------------------------------------- the callback

class SweepParentCallback(Callback):
    """One MLflow parent run per multirun; the jobs' runs are its tagged children."""

    def __init__(self) -> None:
        self.tracker: tracking.Tracker = tracking.NullTracker()
        self.config: DictConfig | None = None  # the sweep's config, while its parent is open
        self._job_started_ms = 0
        self._interrupted = False

    def __getstate__(self) -> dict:
        # Launchers pickle the callbacks to their workers; the parent run stays here.
        return {"tracker": tracking.NullTracker(), "config": None, "_job_started_ms": 0,
                "_interrupted": False}

    def _watch_stop_signals(self, config: DictConfig) -> None:
        """Remember a stop signal (Ctrl-C, SIGTERM, SIGHUP: the parent then ends KILLED, not
        FAILED), and stop the running jobs at their next safe point.

        With the basic launcher the job runs in this process, and the handler before
        ours stops it at its next safe point (:mod:`dqn_jax.runner.interrupts`). Other launchers
        run the jobs in other processes, which this one only waits for: it sends them the
        signal, waits until they have saved and closed their runs (at most the grace
        period), then stops the launcher (:func:`dqn_jax.sweeps.jobs.stop_running_jobs`).
        """
        in_process = str(config.hydra.launcher.get("_target_", "")).endswith("BasicLauncher")
        sweep_dir = Path(str(config.hydra.sweep.dir))
        grace = float(config.get("stop_grace_seconds") or interrupts.DEFAULT_GRACE_SECONDS)
        if interrupts.active() is not None:  # the command's own: its timer is this grace too
            interrupts.active().grace = grace
        previous = {signum: signal.getsignal(signum) for signum in interrupts.STOP_SIGNALS}
        if str(config.hydra.launcher.get("_target_", "")).endswith("RayLauncher"):
            _start_ray(config)  # now: its handler (exit at once) is then replaced by ours below

        def on_signal(signum, frame):
            first = not self._interrupted
            self._interrupted = True
            with contextlib.suppress(OSError):  # no job may start after this
                (sweep_dir / INTERRUPTED_FILE).touch()
            if in_process and callable(previous[signum]):
                return previous[signum](signum, frame)
            if callable(previous[signum]):
                with contextlib.suppress(KeyboardInterrupt):
                    previous[signum](signum, frame)  # records the signal: the exit status is 128 + it
            if first:
                sweep_jobs.stop_running_jobs(sweep_dir, signum, grace)
            raise KeyboardInterrupt

        with contextlib.suppress(ValueError):  # not the main thread: a signal reads as a failure
            for signum in interrupts.STOP_SIGNALS:
                signal.signal(signum, on_signal)

    # -- the launching process

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        _check_store(config)
        (sweep_dir / INTERRUPTED_FILE).unlink(missing_ok=True)  # an earlier launch's Ctrl-C: this one resumes
        os.environ[sweep_jobs.LAUNCHER_PID_ENV] = str(os.getpid())  # the jobs tell their process from this one
        self._watch_stop_signals(config)
        if config.logger.name != "none":
            _close_killed_launch(config, tracking.read_run_id(sweep_dir))
        if config.logger.name == "none" or os.environ.get(PARENT_RUN_ENV):
            # a parent id left by an earlier sweep in this directory
            (sweep_dir / tracking.RUN_ID_FILE).unlink(missing_ok=True)
            return
        sid = sweep_id(sweep_dir)
        tags = {"dqn_jax.sweep": "true", "dqn_jax.sweep_id": sid,
                "dqn_jax.sweep_dir": str(sweep_dir.resolve()),
                "dqn_jax.launcher": config.hydra.launcher.get("_target_", ""),
                "dqn_jax.sweeper": config.hydra.sweeper.get("_target_", "")}
        self.tracker = tracking.start_tracker(config, sweep_dir, run_name=f"{config.name}-sweep-{sid}",
                                              tags=tags, resume=False)
        if self.tracker.run_id is None:
            return
        self.config = config
        self.tracker.log_params(_sweep_params(config))
        self.tracker.flush()  # the jobs read sweep.overrides from the store
        os.environ[PARENT_RUN_ENV] = self.tracker.run_id
        # Closed at exit if the multirun does not end normally: before Python waits for
        # the threads left running (a job's hung thread must not keep the parent open).
        # Private, as no public API runs before that wait (atexit runs after it); atexit if gone.
        register = getattr(threading, "_register_atexit", atexit.register)
        register(self._close_at_exit)
        log.info("MLflow: sweep %s, parent run %s", sid, self.tracker.run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.config is None:
            return
        results = Path(str(config.hydra.sweep.dir)) / "optimization_results.yaml"
        if results.is_file():
            self._log_best(OmegaConf.to_container(OmegaConf.load(results)))
        total, failed = self._count_jobs()
        if total > 1:
            self._compare(Path(str(config.hydra.sweep.dir)) / "compare")
        self._close("KILLED" if self._interrupted else "FINISHED", total, failed)

    def _compare(self, out_dir: Path) -> None:
        """The children's reward curves and scores, logged to the parent (``dqn-jax-compare``)."""

        try:
            self.tracker.flush()
            client = store.client(self.config)
            compare.compare(client, client.get_run(self.tracker.run_id), out_dir)
        except Exception as exc:  # a picture must not fail the sweep
            log.warning("MLflow: could not compare the sweep's runs: %s", exc)

    def _close_at_exit(self) -> None:
        """The sweep ended early (a failed job, a launcher error, Ctrl-C): close the parent, say why."""
        if self.config is None:
            return
        sid, run_id = sweep_id(self.config.hydra.sweep.dir), self.tracker.run_id
        total, failed = self._count_jobs()
        status = "FAILED" if failed or not self._interrupted else "KILLED"
        self._close_orphans()
        self._close(status, total, failed)
        if failed:
            what = f"{len(failed)} of {total} jobs failed ({'; '.join(failed[:3])})"
        elif self._interrupted:
            what = f"interrupted with {_jobs(total)} finished (a running job saves its checkpoint first)"
        else:
            what = f"the sweep failed after {_jobs(total)} (the error is above)"
        print(f"dqn_jax: error: sweep {sid}: {what}; MLflow parent run {run_id} ended {status}",
              file=sys.stderr)

    def _close_orphans(self) -> None:
        """Children left RUNNING (their worker was stopped with the sweep) end KILLED.

        A job still running elsewhere (a cluster) sets its own status when it ends.
        """
        try:
            client = store.client(self.config)
            for child in _children(client, self.tracker.run_id):
                if child.info.status == "RUNNING":
                    client.set_tag(child.info.run_id, "dqn_jax.closed_by_sweep", "true")
                    client.set_terminated(child.info.run_id, "KILLED")
        except Exception as exc:
            log.warning("MLflow: could not close the sweep's unfinished runs: %s", exc)

    def _count_jobs(self) -> tuple[int, list[str]]:
        try:
            tags = store.client(self.config).get_run(self.tracker.run_id).data.tags
        except Exception as exc:
            log.warning("MLflow: could not read the sweep's job tags: %s", exc)
            return 0, []
        jobs = {k.removeprefix(JOB_TAG): v for k, v in tags.items() if k.startswith(JOB_TAG)}
        failed = [f"job {k}: {v.removeprefix('FAILED: ')}" for k, v in
                  sorted(jobs.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)
                  if v.startswith("FAILED")]
        return len(jobs), failed

    def _close(self, status: str, total: int, failed: list[str]) -> None:
        self.tracker.set_tags({"dqn_jax.jobs_total": total, "dqn_jax.jobs_failed": len(failed)})
        self.tracker.finish(status)
        os.environ.pop(PARENT_RUN_ENV, None)
        self.config = None

    def _log_best(self, results: dict) -> None:
        """Optuna's best trial: its params and value on the parent, and which child it was."""
        best = results.get("best_params") or {}
        self.tracker.log_params({f"best.{k}": v for k, v in best.items()})
        if results.get("best_value") is not None:
            self.tracker.log_metrics({"best_value": float(results["best_value"])}, step=0)
        self.tracker.log_text(OmegaConf.to_yaml(OmegaConf.create(results)),
                              "optimization_results.yaml")
        wanted = {f"{k}={v}" for k, v in best.items()}
        try:
            for child in _children(store.client(self.config), self.tracker.run_id):
                given = set(json.loads(child.data.tags.get("dqn_jax.overrides_json", "[]")))
                if wanted and wanted <= given and child.info.status == "FINISHED":
                    self.tracker.set_tags({"dqn_jax.best_run_id": child.info.run_id,
                                           "dqn_jax.best_job_num": child.data.tags.get("dqn_jax.job_num")})
                    break
        except Exception as exc:
            log.warning("MLflow: could not find the best trial's run: %s", exc)

    # -- each job's process

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        # After a Ctrl-C (the running jobs save and close their runs) start no more jobs;
        # the parent is closed KILLED at exit.
        if self._interrupted:
            request = interrupts.active()  # the launching process (basic launcher)
            raise SystemExit(request.exit_status if request is not None else 130)
        # (a job in another process checks the sweep's INTERRUPTED_FILE itself, in
        # sweep_jobs.running_job: Hydra turns an exception raised here into a warning)
        self._job_started_ms = int(time.time() * 1000) - 1000

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not is_multirun(config.hydra) or config.logger.name == "none":
            return
        try:
            self._record_job(config, job_return)
        except Exception as exc:  # the job's own result matters more than its tags
            log.warning("MLflow: could not record sweep job %s: %s", config.hydra.job.num, exc)

    def _record_job(self, config: DictConfig, job_return: Any) -> None:
        client = store.client(config)
        parent_id = sweep_parent_run_id()
        common = _common_overrides(client, parent_id)
        mine = job_overrides(config, common)
        error = sweep_jobs.job_error(job_return)
        status = tracking.run_status(error)  # KILLED: stopped and saved (JobStopped), not a failure
        failed, stopped = error is not None, status == "KILLED"
        tags = {"dqn_jax.sweep_id": sweep_id(config.hydra.sweep.dir),
                "dqn_jax.job_num": str(config.hydra.job.num),
                "dqn_jax.overrides": _cut(" ".join(mine)),
                "dqn_jax.overrides_json": _cut(json.dumps(mine))}
        if mine:  # named by what it varies (app.py names it so from the start via child_run_name)
            tags["mlflow.runName"] = _cut(" ".join(mine))
        if parent_id:
            tags["mlflow.parentRunId"] = parent_id
        if failed and not stopped:
            tags["dqn_jax.error"] = sweep_jobs.error_line(error)
        run = sweep_jobs.job_run(client, config, self._job_started_ms)
        if run is None and failed and not stopped:  # a job stopped before it started has no run
            run = sweep_jobs.open_failed_run(config, tags, parent_id, error)
        if run is not None:
            from mlflow.entities import RunTag

            client.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            if failed and run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, status)
        if parent_id:
            outcome = f"{status}: {sweep_jobs.error_line(error)}" if failed else "COMPLETED"
            client.set_tag(parent_id, f"{JOB_TAG}{config.hydra.job.num}", _cut(outcome))


def _start_ray(config: DictConfig) -> None:
    """Start Ray as the Ray launcher would (its own function and settings), before the stop
    signals are watched: ray.init replaces SIGTERM's handler with one that exits at once."""
    from hydra_plugins.hydra_ray_launcher._launcher_util import start_ray

    init = OmegaConf.to_container(config.hydra.launcher.ray.init, resolve=True)
    init.setdefault("object_store_memory", 78643200)  # the launcher's default (hydra-ray-launcher 1.2.2)
    start_ray(OmegaConf.create(init))


def _check_store(config: DictConfig) -> None:
    """A store that cannot be used ends the sweep before any job, in one line, status 2
    (Hydra turns a callback's exception into a warning and goes on, so exit here)."""

    try:
        tracking.check_store(config)
    except ConfigError as err:
        print(f"dqn_jax: error: {err}", file=sys.stderr)  # (dqn_jax.__main__ keeps one such prefix)
        raise SystemExit(2) from None


def _close_killed_launch(config: DictConfig, parent_id: str | None) -> None:
    """An earlier launch in this sweep directory was killed (kill -9): close its runs KILLED."""
    if not parent_id:
        return
    try:
        closed = stale.close_orphaned_sweep(store.client(config), parent_id, "a relaunch of the sweep")
    except Exception as exc:
        log.warning("MLflow: could not check the earlier launch of this sweep: %s", exc)
        return
    if closed:
        print(f"dqn_jax: the earlier launch of sweep {sweep_id(config.hydra.sweep.dir)} was killed; "
              f"its MLflow parent run {parent_id} and {_runs(len(closed) - (parent_id in closed))} "
              "left RUNNING are now KILLED", file=sys.stderr)


def _runs(count: int) -> str:
    return f"{count} child run" if count == 1 else f"{count} child runs"


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"


def _sweep_params(config: DictConfig) -> dict[str, Any]:
    """What the parent run records: the command's overrides and the sweeper's settings."""
    sweeper = config.hydra.sweeper
    params: dict[str, Any] = {"sweep.overrides": list(config.hydra.overrides.task)}
    for key, value in (sweeper.get("params") or {}).items():
        params[f"sweep.params.{key}"] = value
    for key in ("direction", "n_trials", "n_jobs", "study_name", "max_failure_rate"):
        value = sweeper.get(key)
        if value is not None:
            params[f"sweep.{key}"] = getattr(value, "name", value)  # an enum by its name
    if sweeper.get("sampler") is not None:
        params["sweep.sampler"] = sweeper.sampler.get("_target_", "")
    if "objective" in config:
        params["sweep.objective"] = config.objective
    return params


def _children(client, parent_id: str) -> list:
    """Every run whose parent is ``parent_id``, in any experiment of the store."""
    return store.search_runs(client, f"tags.mlflow.parentRunId = '{parent_id}'")

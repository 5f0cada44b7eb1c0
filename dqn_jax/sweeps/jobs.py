"""The jobs' side of a sweep: which sweep a job belongs to, and what it varies.

:func:`sweep_parent_run_id` finds the sweep's parent run: the id is in
``$DQN_JAX_PARENT_RUN_ID`` for launchers whose workers inherit the launching process's
environment (basic, joblib/loky, submitit local, a local Ray), and in the file
``<hydra.sweep.dir>/mlflow_run_id`` for those on a shared file system (Slurm).
:func:`job_overrides` and :func:`child_run_name` give a job's own overrides, less those
the sweep's command gives every job: its children are named by what they vary.
:func:`is_multirun` tells a sweep's job from a single run. A stop signal reaches the
running jobs (:func:`stop_running_jobs`); at a job's end, :func:`job_error`,
:func:`job_run` and :func:`open_failed_run` give what it raised and the run to tag.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, suppress
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dqn_jax import tracking
from dqn_jax.runner.interrupts import signal_name
from dqn_jax.tracking import store

log = logging.getLogger("dqn_jax.sweeps")

PARENT_RUN_ENV = "DQN_JAX_PARENT_RUN_ID"  # set while a sweep's parent run is open
MAX_TAG_LENGTH = 5000  # MLflow's limit on a tag value is 8000 characters


def _hydra_config() -> DictConfig | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def is_multirun(hydra_cfg=None) -> bool:
    """True in a job of a Hydra multirun; ``hydra_cfg``: the job's ``hydra`` config, else the
    running Hydra app's (False outside one)."""
    from hydra.types import RunMode

    hydra_cfg = hydra_cfg if hydra_cfg is not None else _hydra_config()
    return hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN


def sweep_parent_run_id() -> str | None:
    """The parent run of the sweep this job belongs to, if a sweep opened one.

    In a multirun job, the id the callback wrote in the sweep directory (it belongs to
    this very sweep, and reaches Slurm jobs on a shared file system); else the one in
    ``$DQN_JAX_PARENT_RUN_ID`` (workers that inherit the launching process's environment).
    """
    hydra_cfg = _hydra_config()
    if is_multirun(hydra_cfg):
        from_file = tracking.read_run_id(str(hydra_cfg.sweep.dir))
        if from_file:
            return from_file
    return os.environ.get(PARENT_RUN_ENV) or None


def sweep_id(sweep_dir: str | Path) -> str:
    """A sweep's id: the name of its directory (by default its start time)."""
    return Path(str(sweep_dir)).name


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TAG_LENGTH else text[:MAX_TAG_LENGTH - 3] + "..."


def job_overrides(config: DictConfig, common: list[str] | None = None) -> list[str]:
    """The job's task overrides, less those the sweep's command gives every job (``common``).

    An override is shared when the command's last override of its key is a plain value
    equal to the job's (``progress=false`` and ``progress=False`` are equal); a swept key
    (``seed=0,1``) and the sweeper's own params always stay.
    """
    return _varied([str(o) for o in config.hydra.overrides.task], common)


def _varied(overrides: list[str], common: list[str] | None) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    shared = {}
    for override in parser.parse_overrides(list(common or [])):
        shared[override.key_or_group] = override
    kept = []
    for text, override in zip(overrides, parser.parse_overrides(overrides), strict=True):
        given = shared.get(override.key_or_group)
        if given is not None and not given.is_sweep_override() and given.type == override.type \
                and given.value() == override.value():
            continue
        kept.append(text)
    return kept


def child_run_name(default_name: str, cfg=None) -> str:
    """A sweep job's MLflow run name: what it varies (``schedule.learning_rate.start=0.0003
    seed=1``), its overrides less those the sweep's command gives every job; outside a
    multirun job (or when every override is shared), ``default_name``.

    The command's overrides come from the sweep directory's ``multirun.yaml`` (Hydra's
    basic sweeper writes it), else from the parent run (``cfg`` gives the store).
    """
    hydra_cfg = _hydra_config()
    if not is_multirun(hydra_cfg):
        return default_name
    return _cut(" ".join(_varied([str(o) for o in hydra_cfg.overrides.task],
                                 _command_overrides(hydra_cfg, cfg)))) or default_name


def _command_overrides(hydra_cfg, cfg) -> list[str]:
    saved = Path(str(hydra_cfg.sweep.dir)) / "multirun.yaml"
    try:
        if saved.is_file():
            return [str(o) for o in OmegaConf.load(saved).hydra.overrides.task]
        if cfg is not None and cfg.logger.name != "none":
            return _common_overrides(store.client(cfg), sweep_parent_run_id())
    except Exception as exc:  # a name is not worth failing the job for
        log.warning("could not read the sweep's overrides to name the job's run: %s", exc)
    return []


def _common_overrides(client, parent_id: str | None) -> list[str]:
    """The overrides of the sweep's command that every job shares (logged on its parent)."""
    if not parent_id:
        return []
    logged = client.get_run(parent_id).data.params.get("sweep.overrides", "[]")
    try:  # a swept value ("seed=0,1") never equals a job's, so it is never dropped
        return [str(o) for o in json.loads(logged)]
    except ValueError:
        return []


# ---------------------------------------------------------------------------- stopped jobs

LAUNCHER_PID_ENV = "DQN_JAX_SWEEP_PID"  # the launching process of the sweep, set while it runs
INTERRUPTED_FILE = ".interrupted"  # in the sweep directory after a stop signal: no job starts
RUNNING_DIR = ".running"  # in the sweep directory: a file per job running now, holding its pid


class JobStopped(tracking.RunStopped):
    """A sweep job in a worker process stopped by a signal: saved, its run KILLED."""


def in_launching_process() -> bool:
    """True in the process that launched the sweep (the basic launcher runs its jobs there)."""
    return os.environ.get(LAUNCHER_PID_ENV, str(os.getpid())) == str(os.getpid())


def job_stopped(stop_request) -> None:
    """A job's run stopped, saved and closed KILLED in a worker: ask submitit to requeue it
    (its time-limit signal came; submitit exits the process), else raise :class:`JobStopped`,
    which the launcher reports back like any job's error (a KeyboardInterrupt would be
    taken for the worker's death, and joblib would kill the other workers mid-save)."""

    if stop_request is not None and stop_request.requeue is not None:
        stop_request.requeue(stop_request.signum, None)
    name = signal_name(stop_request.signum if stop_request is not None else None)
    raise JobStopped(f"stopped by {name} with its checkpoint saved; relaunch the sweep to resume it") from None


@contextmanager
def running_job(sweep_dir: str | Path, job_num) -> Iterator[None]:
    """Mark the job running (its pid in ``<sweep_dir>/.running/<job_num>``) while the block runs:
    the launching process forwards a stop signal to it and waits for it (:func:`stop_running_jobs`)."""
    if (Path(str(sweep_dir)) / INTERRUPTED_FILE).exists():  # (Hydra turns a callback's error into a warning)
        raise JobStopped(f"not started: the sweep was stopped; job {job_num} runs when it is relaunched")
    marker = Path(str(sweep_dir)) / RUNNING_DIR / str(job_num)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(f"{socket.gethostname()} {os.getpid()}")
    except OSError as exc:
        log.warning("cannot mark the job running in %s (%s): a stop signal will not reach it", marker, exc)
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def _running_pids(sweep_dir: Path) -> list[int]:
    """The pids of this machine's jobs marked running (a job on another node stops by its own signal)."""
    pids = []
    for marker in (sweep_dir / RUNNING_DIR).glob("*"):
        try:
            host, pid = marker.read_text().split()
        except (OSError, ValueError):
            continue
        if host == socket.gethostname() and _alive(int(pid)):
            pids.append(int(pid))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def stop_running_jobs(sweep_dir: str | Path, signum: int, grace: float) -> int:
    """Send ``signum`` to the sweep's running jobs on this machine and wait (at most ``grace``
    seconds) until they have saved and ended; the number of jobs signalled."""
    sweep_dir, signalled = Path(str(sweep_dir)), set()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        running = _running_pids(sweep_dir)
        if not running:
            break
        for pid in set(running) - signalled:  # a job that began as the signal came is stopped too
            with suppress(OSError):
                os.kill(pid, signum)
            signalled.add(pid)
        time.sleep(0.1)
    return len(signalled)


# ---------------------------------------------------------------------------- a job's end

def job_run(client, config, started_ms: int):
    """The MLflow run the job opened or continued (its id is in the job's directory)."""
    run = tracking._open_run(client, tracking.read_run_id(config.hydra.runtime.output_dir))
    if run is None:
        return None
    touched = max(run.info.start_time or 0, run.info.end_time or 0)
    # a run left in the directory by an earlier sweep, not touched by this job, is not its run
    return run if run.info.status == "RUNNING" or touched >= started_ms else None


def job_error(job_return) -> BaseException | None:
    """What a job raised, or None if it completed. Hydra's public ``return_value`` raises it,
    after a line on stderr that Hydra's sweeper writes anyway when it reads it: kept out here."""
    from hydra.core.utils import JobStatus

    if job_return.status == JobStatus.COMPLETED:
        return None
    try:
        with redirect_stderr(io.StringIO()):
            _ = job_return.return_value
    except BaseException as error:  # the job's own exception, re-raised by Hydra
        return error
    return None


def error_line(error: BaseException) -> str:
    """The error's type and first line, cut to a tag's length."""
    return _cut(f"{type(error).__name__}: {error}".splitlines()[0] if str(error) else
                type(error).__name__)


def open_failed_run(config: DictConfig, tags: dict, parent_id: str | None, error):
    """A child run for a job that failed before opening its own: FAILED, with the error."""
    import traceback

    run_dir = Path(config.hydra.runtime.output_dir)
    name = tags.get("mlflow.runName") or f"{OmegaConf.select(config, 'env.game', default='job')}-{config.name}"
    tracker = tracking.start_tracker(config, run_dir, run_name=name,
                                     tags=tags, parent_run_id=parent_id, resume=False)
    if tracker.run_id is None:
        return None
    if error is not None:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        tracker.log_text(text, "error.txt")
    tracker.finish("FAILED")
    return store.client(config).get_run(tracker.run_id)

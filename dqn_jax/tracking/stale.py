"""Runs left RUNNING by a process that was killed (``kill -9``, a crash, a power cut).

While a tracker is open, its process holds an exclusive ``flock`` on ``.mlflow-run.lock``
in the run's directory (tag ``dqn_jax.run_dir``); the kernel drops the lock when the
process ends, however it ends. So a run whose status is still RUNNING but whose lock
file can be locked by someone else has lost its process: :func:`close_if_orphaned`
closes it KILLED with the tag ``dqn_jax.closed_reason`` saying why. A run whose
directory cannot be seen from here (another machine) is left as it is.

A sweep's parent run is checked, with its children, by the next command that touches
the sweep: a relaunch with the same ``hydra.sweep.dir`` (:mod:`dqn_jax.sweeps`) or
``dqn-jax-compare`` on it (:mod:`dqn_jax.sweeps.compare`).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import socket
from pathlib import Path

from dqn_jax.tracking import store

log = logging.getLogger(__name__)

LOCK_FILE = ".mlflow-run.lock"
REASON_TAG = "dqn_jax.closed_reason"


def hold(run_dir: str | Path):
    """Lock the run directory's lock file for this process's life (or until :func:`release`).

    Returns the open file (keep it), or None if another process holds it already.
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 - the lock lives as long as the file is open
    except OSError as exc:
        log.warning("MLflow: cannot create %s (%s); a kill -9 of this run will leave it RUNNING",
                    path, exc)
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def release(handle) -> None:
    if handle is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()


def is_orphaned(run_dir: str | Path | None) -> bool:
    """True when the run's lock file exists here and no process holds it."""
    if not run_dir:
        return False
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: an older run, or a directory on another machine
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its process is alive
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def close_if_orphaned(client, run, by: str) -> bool:
    """Close ``run`` KILLED if it is RUNNING and its process is gone; True if it was closed."""
    if run.info.status != "RUNNING" or not is_orphaned(run.data.tags.get("dqn_jax.run_dir")):
        return False
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    reason = (f"the process that ran it ended without closing it (kill -9, a crash or a power cut); "
              f"closed KILLED by {by} on {socket.gethostname()} at {when}")
    client.set_tag(run.info.run_id, REASON_TAG, reason)
    client.set_terminated(run.info.run_id, "KILLED")
    return True


def close_orphaned_sweep(client, parent_id: str, by: str) -> list[str]:
    """Close a sweep's parent run and its children whose processes are gone; their ids."""
    from mlflow.exceptions import MlflowException

    try:
        parent = client.get_run(parent_id)
    except MlflowException:
        return []
    closed = [parent_id] if close_if_orphaned(client, parent, by) else []
    for child in store.search_runs(client, f"tags.mlflow.parentRunId = '{parent_id}' "
                                           "and attributes.status = 'RUNNING'"):
        if close_if_orphaned(client, child, by):
            closed.append(child.info.run_id)
    return closed

"""MLflow runs for dqn_jax: params, batched metrics, artifacts and resume.

The play loop calls :meth:`Tracker.log_metrics` at every episode; that only puts
the values on a queue. Every tracker call is queued the same way, and a background
thread (:mod:`dqn_jax.tracking.sender`) sends them in order, metrics with ``log_batch`` at most
every ``logger.flush_seconds``, so play never waits on the store. If the store goes
away the values are kept and sent when it is back, or kept in the run directory and
sent later with ``python -m dqn_jax.tracking import RUN_DIR`` (:mod:`dqn_jax.tracking.journal`).
A value the store refuses is remembered and reported once; it never stops training.
:func:`check_store` rejects an unreachable store in one line before a run starts, and a
run left RUNNING by a killed process is closed by :mod:`dqn_jax.tracking.stale`.

Without ``logger.tracking_uri`` the store is an SQLite file under ``paths.root``
and artifacts go to ``paths.mlflow_artifacts``: a run needs no server. A training
run writes its MLflow run id to ``<run_dir>/mlflow_run_id``, so resuming the
training resumes the same MLflow run. Sweeps' parent runs are in :mod:`dqn_jax.sweeps`.

* this module: trackers, a run opened or resumed, the config as params;
* ``store``: where the store is, its client, a search of every experiment;
* ``errors``: what an exception means (a run's status, a busy store, a few words why);
* ``http``: the HTTP budget of every call; ``store_check``: is the store usable;
* ``journal``: operations and the unsent file (``python -m dqn_jax.tracking import``);
  ``sender``: the background sender; ``stale``: runs left RUNNING by a killed process;
* ``ui``: the MLflow UI's addresses and the store it shows (``make ui``).

May import: ``dqn_jax.config`` (the layers allow ``dqn_jax.core`` and ``dqn_jax.envs``
too); never the algorithms, the runner, the sweeps, the analysis or the application.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import posixpath
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dqn_jax.config import ConfigError, experiment_name
from dqn_jax.tracking import journal, stale, store
from dqn_jax.tracking.errors import RunStopped, is_transient, reason, run_status  # noqa: F401 - used by others
from dqn_jax.tracking.http import configure_http
from dqn_jax.tracking.sender import Sender
from dqn_jax.tracking.store import tracking_uri
from dqn_jax.tracking.store_check import check

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
STATUSES = ("FINISHED", "FAILED", "KILLED")
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
PARAMS_PER_BATCH = journal.PARAMS_PER_BATCH
METRICS_PER_BATCH = journal.METRICS_PER_BATCH
READ_RETRY_SECONDS = (2.0, 8.0)  # waits before asking a busy or unreachable store again for a run
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3: training runs, not GenAI
_METRIC_NAME = re.compile(r"^[\w\-. :/]+$")


class Tracker:
    """Where a run's params, metrics and files go. This base does nothing."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def flush(self) -> None: ...

    def persist(self) -> None:
        """Make every call so far survive a crash of this process (before a checkpoint)."""

    def finish(self, status: str = "FINISHED") -> None: ...

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish(run_status(exc))


class NullTracker(Tracker):
    """Tracking switched off (``logger=none``): every call is a no-op."""


class MlflowTracker(Tracker):
    """One MLflow run. Every call only queues an operation; a background
    :class:`~dqn_jax.tracking.sender.Sender` sends them in order and survives store outages."""

    def __init__(self, tracking_uri: str, run_id: str, *, flush_seconds: float = 2.0,
                 run_dir: str | Path | None = None):
        configure_http()
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = store.client(tracking_uri)
        self._good_names: set[str] = set()
        self._finished = False
        self._lock = stale.hold(run_dir) if run_dir is not None else None
        self.sender = Sender(self.client, run_id, tracking_uri, run_dir=run_dir,
                             flush_seconds=flush_seconds)

    # what the sender counted: failures are remembered, warned about once, never raised
    error = property(lambda self: self.sender.error)
    failures = property(lambda self: self.sender.failures)
    dropped_metrics = property(lambda self: self.sender.dropped_metrics)
    send_cpu_seconds = property(lambda self: self.sender.send_cpu_seconds)

    def _put(self, op: list) -> None:
        if self._finished:
            self.sender.failed(f"{op[0]} after finish", RuntimeError("the run is finished"),
                               int(op[0] == "metric"))
            return
        self.sender.put(op)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue the values; JAX or numpy scalars are converted later, off the play loop."""
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            if key not in self._good_names:
                if not _valid_metric_name(key):  # one bad name would sink a whole batch
                    self.sender.failed("log_metrics", ValueError(f"invalid metric name {key!r}"), 1)
                    continue
                self._good_names.add(key)
            self._put(["metric", key, value, timestamp, int(step)])

    def flush(self) -> None:
        """Send what is queued now (while the store is away: keep it in the run directory)."""
        self.sender.flush()

    def persist(self) -> None:
        """Keep what is queued in the run directory's unsent file at once, without waiting on
        the store; the sender sends it and removes the file (a resume sends what is left)."""
        self.sender.persist()

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params (values as strings, cut to MLflow's limit). MLflow params cannot
        change; a key already logged with another value keeps it, with a warning."""
        self._put(["params", {str(k): _param_value(v) for k, v in params.items()}])

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._put(["tags", {str(k): str(v) for k, v in tags.items()}])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._put(["artifact", str(Path(path).resolve()), artifact_path])

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self._put(["artifacts", str(Path(directory).resolve()), artifact_path])

    def log_text(self, text: str, artifact_file: str) -> None:
        self._put(["text", text, artifact_file])

    def finish(self, status: str = "FINISHED") -> None:
        """Send what is queued, then close the run with ``status``. Later calls do nothing.

        If the store is away, at most one more try (bounded by the HTTP timeouts), then
        what is left, the status included, is kept in the run directory for the import.
        """
        if status not in STATUSES:
            raise ValueError(f"status={status!r}; choose one of {', '.join(STATUSES)}")
        if self._finished:
            return
        self._put(["status", status, int(time.time() * 1000)])
        self._finished = True
        self.sender.close()
        stale.release(self._lock)
        if self.failures:
            log.warning("MLflow: %d logging calls failed (%d metric values lost) in run %s; "
                        "the first: %s", self.failures, self.dropped_metrics, self.run_id,
                        self.error)


def _valid_metric_name(name: str) -> bool:
    """MLflow's rule: these characters only, and a normalised relative path."""
    if not isinstance(name, str) or _METRIC_NAME.match(name) is None:
        return False
    return posixpath.normpath(name) == name and name != "." and not name.startswith(("..", "/"))


# ---------------------------------------------------------------------------- config → store

def _artifact_location(cfg, uri: str) -> str | None:
    """Keep a local store's artifacts in the project; a server decides its own."""
    if not uri.startswith("sqlite:"):
        return None
    root = Path(cfg.paths.mlflow_artifacts).expanduser().resolve()
    return (root / experiment_name(cfg).replace("/", "_")).as_uri()


def _experiment_id(client, cfg, uri: str) -> str:
    """Get or create the experiment (a parallel sweep job may create it first)."""
    from mlflow.exceptions import MlflowException

    name = experiment_name(cfg)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(cfg, uri),
                                            tags=EXPERIMENT_KIND)
        except MlflowException:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    for key, value in EXPERIMENT_KIND.items():  # an experiment made by an earlier version
        if key not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def check_store(cfg) -> None:
    """Raise ConfigError (one line) unless the tracking store can be used, within about 10 s
    (:mod:`dqn_jax.tracking.store_check`). Does nothing for ``logger=none``; writes nothing."""
    if cfg.logger.name != "none":

        check(tracking_uri(cfg), cfg.logger.tracking_uri)
        configure_http()  # from here on, every MLflow call of this process has a short budget


def send_unsent(cfg, run_dir: str | Path) -> None:
    """Send what an earlier run kept in ``run_dir`` (through an outage, or before a crash);
    call it before a resume cuts the run's MLflow history back to its checkpoint. One line
    says what was sent or why not."""
    if cfg.logger.name == "none" or not journal.unsent_files(run_dir):
        return
    configure_http()
    try:
        sent, refused = journal.import_unsent(run_dir)
    except OSError as err:  # still away: the files stay for the import command
        log.warning("MLflow: %s", err)
        return
    print(f"sent {sent} MLflow operations an earlier run kept in {run_dir}"
          + (f" ({refused} refused by the store)" if refused else ""))


def read_run_id(run_dir: str | Path) -> str | None:
    """The MLflow run id a run directory was tracked under, if any."""
    path = Path(run_dir) / RUN_ID_FILE
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def write_run_id(run_dir: Path, run_id: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RUN_ID_FILE}.tmp"
    tmp.write_text(run_id + "\n")
    os.replace(tmp, run_dir / RUN_ID_FILE)


def read_run(client, run_id: str | None):
    """The run ``run_id`` as the store has it (deleted or not), or None when the store has
    no such run. A store that is busy or away is asked again after each of
    ``READ_RETRY_SECONDS``, then the command ends with one line (ConfigError): taking it
    for "no such run" would start a new run and split the history of the one resumed."""
    from mlflow.exceptions import MlflowException


    if not run_id:
        return None
    for wait in (*READ_RETRY_SECONDS, None):
        try:
            return client.get_run(run_id)
        except MlflowException as exc:
            if not is_transient(exc):
                return None  # not a run of this store
            if wait is None:
                raise ConfigError(f"the MLflow store did not answer when run {run_id} was read back to "
                                  f"resume it ({reason(exc)}); nothing is lost: run the same "
                                  "command again when it answers") from None
            time.sleep(wait)


def _open_run(client, run_id: str | None):
    """The run ``run_id`` if it exists, undeleted, in this store; else None."""
    run = read_run(client, run_id)
    return run if run is not None and run.info.lifecycle_stage == "active" else None


def start_tracker(cfg, run_dir: str | Path, *, run_name: str, tags: dict | None = None,
                  parent_run_id: str | None = None, resume: bool = True) -> Tracker:
    """Open the MLflow run for ``run_dir``: the one it had (``resume``) or a new one."""
    if cfg.logger.name == "none":
        return NullTracker()
    uri = tracking_uri(cfg)
    if store.sqlite_file(uri) is not None:
        store.sqlite_file(uri).parent.mkdir(parents=True, exist_ok=True)
    configure_http()
    client = store.client(uri)
    experiment_id = _experiment_id(client, cfg, uri)
    run_dir = Path(run_dir).resolve()
    run = _open_run(client, read_run_id(run_dir)) if resume else None
    if run is not None:
        run_id = run.info.run_id
        client.update_run(run_id, status="RUNNING")
        if stale.REASON_TAG in run.data.tags:  # closed KILLED after a kill -9; running again now
            client.delete_tag(run_id, stale.REASON_TAG)
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, str(value))
        if parent_run_id and run.data.tags.get("mlflow.parentRunId") != parent_run_id:
            client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)  # a relaunched sweep resumes its jobs
    else:
        all_tags = {"mlflow.runName": run_name, "mlflow.user": _user(),
                    "mlflow.source.name": "dqn_jax", "mlflow.source.type": "LOCAL",
                    "dqn_jax.run_dir": str(run_dir), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run_id = client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id
        write_run_id(run_dir, run_id)
    unsent = journal.unsent_files(run_dir)
    if unsent:
        log.warning("MLflow: %s holds values an earlier run kept (%s); send them with: %s",
                    run_dir, ", ".join(p.name for p in unsent), journal.IMPORT_COMMAND.format(run_dir=run_dir))
    return MlflowTracker(uri, run_id, flush_seconds=cfg.logger.flush_seconds, run_dir=run_dir)


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "unknown"


# ---------------------------------------------------------------------------- params

def _param_value(value: Any) -> str:
    is_list = isinstance(value, (list, tuple))
    text = json.dumps(list(value), default=str) if is_list else str(value)
    return text[:MAX_PARAM_LENGTH]


def flatten_config(cfg) -> dict[str, str]:
    """The resolved config as ``{"memory.size": "200000", ...}``, ready for params."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = OmegaConf.structured(cfg)
    if isinstance(cfg, DictConfig):
        try:
            data = OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # an interpolation that only resolves inside a Hydra job
            data = OmegaConf.to_container(cfg, resolve=False)
    else:
        data = dict(cfg)
    data.pop("hydra", None)
    flat: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                walk(f"{prefix}{key}.", child)
        else:
            flat[prefix[:-1]] = _param_value(node)

    walk("", data)
    return flat

"""MLflow runs for dqn_jax: params, batched metrics, artifacts and resume.

The play loop calls :meth:`Tracker.log_metrics` at every episode; that only puts
the values on a queue. A background thread sends them with ``log_batch`` at most
every ``logger.flush_seconds``, so play never waits on the store. A failure to log
is remembered and reported once; it never stops training.

Without ``logger.tracking_uri`` the store is an SQLite file under ``paths.root``
and artifacts go to ``paths.mlflow_artifacts``: a run needs no server. A training
run writes its MLflow run id to ``<run_dir>/mlflow_run_id``, so resuming the
training resumes the same MLflow run. Sweeps' parent runs are in :mod:`dqn_jax.sweeps`.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import os
import posixpath
import queue
import re
import threading
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dqn_jax.config import experiment_name

log = logging.getLogger(__name__)

RUN_ID_FILE = "mlflow_run_id"
STATUSES = ("FINISHED", "FAILED", "KILLED")
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
PARAMS_PER_BATCH = 100  # MLflow's limit on params in one log_batch
METRICS_PER_BATCH = 1000  # MLflow's limit on metrics in one log_batch
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

    def finish(self, status: str = "FINISHED") -> None: ...

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish("FINISHED")
        else:
            self.finish("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")


class NullTracker(Tracker):
    """Tracking switched off (``logger=none``): every call is a no-op."""


class MlflowTracker(Tracker):
    """One MLflow run; metrics are sent from a background thread in batches."""

    def __init__(self, tracking_uri: str, run_id: str, *, flush_seconds: float = 2.0):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.flush_seconds = float(flush_seconds)
        self.client = MlflowClient(tracking_uri)
        self.error: BaseException | None = None  # the first failure, if any
        self.failures = 0  # calls that failed
        self.dropped_metrics = 0  # metric values that never reached the store
        self.send_cpu_seconds = 0.0  # CPU time spent sending metrics: the tracker's cost to a run
        self._pending: queue.SimpleQueue = queue.SimpleQueue()
        self._good_names: set[str] = set()
        self._client_lock = threading.Lock()  # one client call at a time keeps metrics in order
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._send_loop, name="mlflow-metrics", daemon=True)
        self._thread.start()

    # -- failures: remembered, warned about once, never raised into the play loop

    def _failed(self, what: str, exc: BaseException, metrics: int = 0) -> None:
        self.failures += 1
        self.dropped_metrics += metrics
        if self.error is None:
            self.error = exc
            log.warning("MLflow: %s failed (%s: %s); training goes on, later failures are "
                        "counted and reported when the run finishes", what, type(exc).__name__, exc)

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        try:
            with self._client_lock:
                fn(*args, **kwargs)
        except Exception as exc:
            self._failed(what, exc)

    # -- metrics

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue the values; JAX or numpy scalars are converted later, off the play loop."""
        if self._finished:
            self._failed("log_metrics after finish", RuntimeError("the run is finished"),
                         len(metrics))
            return
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            if key not in self._good_names:
                if not _valid_metric_name(key):  # one bad name would sink a whole batch
                    self._failed("log_metrics", ValueError(f"invalid metric name {key!r}"), 1)
                    continue
                self._good_names.add(key)
            self._pending.put((key, value, timestamp, int(step)))

    def _send_loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self._send_pending()

    def _send_pending(self) -> None:
        from mlflow.entities import Metric

        started = time.thread_time()
        with self._client_lock:
            items = []
            while True:
                try:
                    items.append(self._pending.get_nowait())
                except queue.Empty:
                    break
            batch = []
            for key, value, timestamp, step in items:
                try:  # float() here, not in log_metrics: a JAX scalar may still be computing
                    batch.append(Metric(key, float(value), timestamp, step))
                except Exception as exc:
                    self._failed(f"converting metric {key!r}", exc, 1)
            for start in range(0, len(batch), METRICS_PER_BATCH):
                chunk = batch[start:start + METRICS_PER_BATCH]
                try:
                    self.client.log_batch(self.run_id, metrics=chunk, synchronous=True)
                except Exception as exc:
                    self._failed("logging metrics", exc, len(chunk))
            self.send_cpu_seconds += time.thread_time() - started

    def flush(self) -> None:
        """Send every queued metric now, in the caller's thread."""
        self._send_pending()

    # -- params, tags, files

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params (values as strings, cut to MLflow's limit), 100 per call.

        MLflow params cannot change; a key already logged with another value is
        skipped with a warning, and one logged with the same value is skipped quietly.
        """
        from mlflow.entities import Param

        values = {str(k): _param_value(v) for k, v in params.items()}
        try:
            with self._client_lock:
                logged = self.client.get_run(self.run_id).data.params
        except Exception as exc:
            self._failed("reading the run's params", exc)
            return
        changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
        if changed:
            log.warning("MLflow: params cannot change within a run; kept the logged values of %s",
                        ", ".join(changed))
        new = [Param(k, v) for k, v in values.items() if k not in logged]
        for start in range(0, len(new), PARAMS_PER_BATCH):
            self._call("logging params", self.client.log_batch, self.run_id,
                       params=new[start:start + PARAMS_PER_BATCH], synchronous=True)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._call("setting tags", self.client.log_batch, self.run_id,
                   tags=[RunTag(str(k), str(v)) for k, v in tags.items()], synchronous=True)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(f"logging {path}", self.client.log_artifact, self.run_id, str(path),
                   artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        self._call(f"logging {directory}", self.client.log_artifacts, self.run_id,
                   str(directory), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(f"logging {artifact_file}", self.client.log_text, self.run_id, text,
                   artifact_file)

    def finish(self, status: str = "FINISHED") -> None:
        """Send what is queued, then close the run with ``status``. Later calls do nothing."""
        if status not in STATUSES:
            raise ValueError(f"status={status!r}; choose one of {', '.join(STATUSES)}")
        if self._finished:
            return
        self._stop.set()
        self._thread.join()
        self.flush()
        self._call("closing the run", self.client.set_terminated, self.run_id, status)
        self._finished = True
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

def tracking_uri(cfg) -> str:
    """The configured tracking URI, else the embedded SQLite store at ``paths.mlflow_db``."""
    if cfg.logger.tracking_uri:
        return str(cfg.logger.tracking_uri)
    return f"sqlite:///{Path(cfg.paths.mlflow_db).expanduser().resolve()}"


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
            return client.create_experiment(name, artifact_location=_artifact_location(cfg, uri))
        except MlflowException:
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def read_run_id(run_dir: str | Path) -> str | None:
    """The MLflow run id a run directory was tracked under, if any."""
    path = Path(run_dir) / RUN_ID_FILE
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def _write_run_id(run_dir: Path, run_id: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RUN_ID_FILE}.tmp"
    tmp.write_text(run_id + "\n")
    os.replace(tmp, run_dir / RUN_ID_FILE)


def _open_run(client, run_id: str | None):
    """The run ``run_id`` if it exists, undeleted, in this store; else None."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run if run.info.lifecycle_stage == "active" else None


def start_tracker(cfg, run_dir: str | Path, *, run_name: str, tags: dict | None = None,
                  parent_run_id: str | None = None, resume: bool = True) -> Tracker:
    """Open the MLflow run for ``run_dir``: the one it had (``resume``) or a new one."""
    if cfg.logger.name == "none":
        return NullTracker()
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    experiment_id = _experiment_id(client, cfg, uri)
    run_dir = Path(run_dir).resolve()
    run = _open_run(client, read_run_id(run_dir)) if resume else None
    if run is not None:
        run_id = run.info.run_id
        client.update_run(run_id, status="RUNNING")
        for key, value in (tags or {}).items():
            client.set_tag(run_id, key, str(value))
    else:
        all_tags = {"mlflow.runName": run_name, "mlflow.user": _user(),
                    "mlflow.source.name": "dqn_jax", "mlflow.source.type": "LOCAL",
                    "dqn_jax.run_dir": str(run_dir), **(tags or {})}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run_id = client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id
        _write_run_id(run_dir, run_id)
    return MlflowTracker(uri, run_id, flush_seconds=cfg.logger.flush_seconds)


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

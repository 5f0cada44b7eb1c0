"""What a run sends to MLflow, as plain operations that can wait in memory or in a file.

A tracker's calls become operations (JSON-ready lists) sent in order by its background
sender (:mod:`dqn_jax.tracking.sender`)::

    ["metric", key, value, timestamp_ms, step]   ["params", {k: v}]   ["tags", {k: v}]
    ["artifact", path, artifact_path]  ["artifacts", dir, artifact_path]
    ["text", text, artifact_file]      ["status", "FINISHED", end_time_ms]

When the tracking store is away at a checkpoint or at the end of the run, the operations
not yet sent are appended to ``<run_dir>/mlflow-unsent-<run id>.jsonl`` (a header line
naming the store and the run, then one operation a line). Sending one twice changes nothing (MLflow
drops a metric value logged again with the same step and timestamp; tags and params are
set to the same value), so the file only ever grows until everything is sent. Send it
when the store is back with::

    python -m dqn_jax.tracking import RUN_DIR [--tracking-uri URI]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dqn_jax.tracking import store
from dqn_jax.tracking.errors import first_line, is_transient, reason
from dqn_jax.tracking.http import configure_http

log = logging.getLogger(__name__)

UNSENT_GLOB = "mlflow-unsent-*.jsonl"  # one file per MLflow run id
IMPORT_COMMAND = "python -m dqn_jax.tracking import {run_dir}"
PARAMS_PER_BATCH = 100  # MLflow's limit on params in one log_batch
METRICS_PER_BATCH = 1000  # MLflow's limit on metrics in one log_batch


# ---------------------------------------------------------------------------- sending

def batch_at(ops, start: int = 0) -> list:
    """The operations sent in one call from ``start``: up to 1000 metrics in a row, else one."""
    first = ops[start]
    if first[0] != "metric":
        return [first]
    batch = []
    for index in range(start, len(ops)):
        if ops[index][0] != "metric" or len(batch) == METRICS_PER_BATCH:
            break
        batch.append(ops[index])
    return batch


def send(client, run_id: str, batch: list) -> None:
    """One MLflow call for ``batch`` (from :func:`batch_at`); raises what the client raises."""
    from mlflow.entities import Metric, RunTag

    kind = batch[0][0]
    if kind == "metric":
        metrics = [Metric(key, value, timestamp, step) for _, key, value, timestamp, step in batch]
        client.log_batch(run_id, metrics=metrics, synchronous=True)
    elif kind == "params":
        _send_params(client, run_id, batch[0][1])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in batch[0][1].items()], synchronous=True)
    elif kind == "artifact":
        client.log_artifact(run_id, batch[0][1], batch[0][2])
    elif kind == "artifacts":
        client.log_artifacts(run_id, batch[0][1], batch[0][2])
    elif kind == "text":
        client.log_text(run_id, batch[0][1], batch[0][2])
    elif kind == "status":
        client.set_terminated(run_id, batch[0][1], end_time=batch[0][2])
    else:
        raise ValueError(f"unknown operation {kind!r}")


def _send_params(client, run_id: str, values: dict[str, str]) -> None:
    """Params cannot change in MLflow: a key logged with another value is kept, with a warning."""
    from mlflow.entities import Param

    logged = client.get_run(run_id).data.params
    changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
    if changed:
        log.warning("MLflow: params cannot change within a run; kept the logged values of %s",
                    ", ".join(changed))
    new = [Param(k, v) for k, v in values.items() if k not in logged]
    for start in range(0, len(new), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=new[start:start + PARAMS_PER_BATCH], synchronous=True)


def counts(ops) -> str:
    """``"12 metric values and 2 other calls"``: what a list of operations holds."""
    metrics = sum(1 for op in ops if op[0] == "metric")
    parts = [f"{metrics} metric values" if metrics else "", f"{len(ops) - metrics} other calls"
             if len(ops) > metrics else ""]
    return " and ".join(p for p in parts if p) or "nothing"


# ---------------------------------------------------------------------------- the file

def unsent_path(run_dir: str | Path, run_id: str) -> Path:
    return Path(run_dir) / UNSENT_GLOB.replace("*", run_id)


def unsent_files(run_dir: str | Path) -> list[Path]:
    return sorted(Path(run_dir).glob(UNSENT_GLOB), key=lambda p: p.stat().st_mtime)


def append(run_dir: str | Path, tracking_uri: str, run_id: str, ops) -> Path:
    """Append ``ops`` to the run's unsent file in ``run_dir`` (header first when it is new)."""
    path = unsent_path(run_dir, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a") as out:
        if new:
            out.write(json.dumps({"tracking_uri": tracking_uri, "run_id": run_id}) + "\n")
        for op in ops:
            out.write(json.dumps(op) + "\n")
        out.flush()
    return path


def read(path: Path) -> tuple[dict, list]:
    lines = path.read_text().splitlines()
    header = json.loads(lines[0])
    ops = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            ops.append(json.loads(line))
        except ValueError:  # a line cut by a crash while writing: the rest is still good
            log.warning("%s line %d is not complete; skipped", path, number)
    return header, ops


def import_file(path: Path, tracking_uri: str | None = None) -> tuple[int, int]:
    """Send one unsent file's operations; returns (sent, refused).

    The file is removed once everything is sent. If the store is still away, the
    operations not sent stay in the file (send it again later) and ConnectionError is
    raised; an operation the store refuses (the run was deleted) is counted and dropped.
    """
    header, ops = read(path)
    uri = tracking_uri or header["tracking_uri"]
    client, run_id = store.client(uri), header["run_id"]
    sent = refused = index = 0
    while index < len(ops):
        batch = batch_at(ops, index)
        try:
            send(client, run_id, batch)
            sent += len(batch)
        except Exception as exc:
            if is_transient(exc):
                rest = path.with_suffix(".tmp")
                rest.write_text("".join(json.dumps(x) + "\n" for x in [header, *ops[index:]]))
                rest.replace(path)
                raise ConnectionError(f"the tracking store at {uri} is still away ({reason(exc)}); "
                                      f"{len(ops) - index} operations are left in {path}") from None
            refused += len(batch)
            log.warning("MLflow: %s refused: %s", batch[0][0], first_line(exc))
        index += len(batch)
    path.unlink()
    return sent, refused


def import_unsent(run_dir: str | Path, tracking_uri: str | None = None) -> tuple[int, int]:
    """Send every unsent file of ``run_dir``, oldest first; returns (sent, refused)."""
    sent = refused = 0
    for path in unsent_files(run_dir):
        done, failed = import_file(path, tracking_uri)
        sent, refused = sent + done, refused + failed
    return sent, refused


def main(argv=None) -> int:
    """``python -m dqn_jax.tracking import RUN_DIR``: send what an outage kept in RUN_DIR."""
    parser = argparse.ArgumentParser(prog="python -m dqn_jax.tracking",
                                     description="Send to MLflow what a tracking-store outage kept "
                                                 f"in a run directory ({UNSENT_GLOB}).")
    commands = parser.add_subparsers(dest="command", required=True)
    imports = commands.add_parser("import", help="send a run directory's unsent metrics, tags and status")
    imports.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    imports.add_argument("--tracking-uri", help="default: the store the run was sent to (in the file)")
    args = parser.parse_args(argv)
    configure_http()
    status = 0
    for run_dir in args.run_dirs:
        if not unsent_files(run_dir):
            print(f"{run_dir}: nothing to import (no {UNSENT_GLOB})")
            continue
        try:
            sent, refused = import_unsent(run_dir, args.tracking_uri)
        except (OSError, ValueError, KeyError) as err:  # ConnectionError: the store is still away
            print(f"dqn_jax.tracking: error: {run_dir}: {err}", file=sys.stderr)
            status = 1
            continue
        print(f"{run_dir}: sent {sent} operations" + (f", {refused} refused by the store" if refused else ""))
        status = status or (1 if refused else 0)
    return status

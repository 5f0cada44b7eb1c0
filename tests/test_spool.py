"""Tracking-store outages: a real ``mlflow server`` stopped and restarted under a real run.

The client's retry budget for one call is about 3 s (``tracking.HTTP_DEFAULTS``: 2
retries, backoff 1 s, connection refused at once); the outages here last longer than
that and than the sender's ``RETRY_SECONDS``.
"""

from __future__ import annotations

import csv
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dqn_jax.tracking import errors
from dqn_jax.tracking import journal as spool
from dqn_jax.tracking.sender import RETRY_SECONDS
from tests.conftest import (
    CART,
    app_env,
    client_for,
    free_port,
    history,
    runs_of,
    start_app,
    wait_for,
)

OUTAGE_SECONDS = 10  # longer than one call's retry budget (~3 s) and RETRY_SECONDS


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_outages_lose_no_metric(tmp_path, mlflow_server):
    """Outage 1 ends during the run: everything is sent when the server is back. Outage 2
    lasts past the end: the run still ends within seconds, keeps what is unsent (its
    status too) in the run directory, and the import command sends it. Nothing is lost.
    About 2 minutes on 2 busy cores (three server starts)."""
    run_dir = tmp_path / "runs" / "cartpole" / "default"
    output = tmp_path / "output.txt"
    server, env = mlflow_server, app_env()
    with open(output, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "dqn_jax", f"paths.root={tmp_path}", *CART, "steps=100000000",
             f"logger.tracking_uri={server.url}", "logger.flush_seconds=0.2"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        rewards = run_dir / "rewards.csv"
        wait_for(lambda: rewards.exists() and len(_rows(rewards)) >= 20, "episodes")
        server.stop()
        went = time.monotonic()
        before = len(_rows(rewards))
        time.sleep(OUTAGE_SECONDS)
        assert process.poll() is None and len(_rows(rewards)) > before + 20  # training went on
        server.start()
        wait_for(lambda: "is back after" in output.read_text(), "the sender to see the server back",
                  timeout=RETRY_SECONDS * 6)
        outage = time.monotonic() - went
        time.sleep(2)
        server.stop()  # outage 2: the server never comes back before the end of the run
        time.sleep(RETRY_SECONDS)
        stopped = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
        ending = time.monotonic() - stopped
    finally:
        if process.poll() is None:
            process.kill()
    text = output.read_text()
    assert process.returncode == 130, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert ending < 30, f"the run took {ending:.0f} s to end with the server away"
    print(f"\noutage 1: {outage:.0f} s (server killed to sender seeing it back); "
          f"run ended {ending:.1f} s after Ctrl-C with the server away")
    assert text.count("does not answer") == 2 and text.count("is back after") == 1, text[-3000:]
    kept_line = [line for line in text.splitlines() if "did not come back" in line]
    assert len(kept_line) == 1 and f"python -m dqn_jax.tracking import {run_dir}" in kept_line[0]
    (unsent,) = spool.unsent_files(run_dir)
    header = json.loads(unsent.read_text().splitlines()[0])
    assert header["tracking_uri"] == server.url
    assert json.loads(unsent.read_text().splitlines()[-1])[:2] == ["status", "KILLED"]

    server.start()
    imported = subprocess.run([sys.executable, "-m", "dqn_jax.tracking", "import", str(run_dir)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert f"{run_dir}: sent " in imported.stdout and not spool.unsent_files(run_dir)

    client = MlflowClient(server.url)
    run = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "KILLED" and run.info.end_time is not None
    rows = _rows(rewards)
    counts = client.get_metric_history(run.info.run_id, "episode/count")
    assert sorted(m.value for m in counts) == [float(r["episode"]) for r in rows]  # every episode, once
    # MLflow keeps one of two equal values at the same step and millisecond (two games
    # ending together with the same score): compare the distinct (step, value) pairs
    scores = client.get_metric_history(run.info.run_id, "episode/score")
    assert {(m.step, m.value) for m in scores} == {(int(r["states"]), float(r["reward"])) for r in rows}
    means = client.get_metric_history(run.info.run_id, "episode/mean30")
    assert {m.step for m in means} == {int(r["states"]) for r in rows}
    assert len(client.get_metric_history(run.info.run_id, "episode/epsilon")) > len(rows) * 0.9
    print(f"{len(rows)} episodes in rewards.csv, {len(counts)} in episode/count, "
          f"{len(scores)} values in episode/score")
    assert {"config.yaml", "rewards.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


# ---------------------------------------------------------------------------- fast: no server

def _dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused


def test_a_run_ending_while_the_store_is_away_keeps_everything_for_the_import(tmp_path, caplog):
    """The tracker's store refuses connections from the start of the outage to the end:
    finish() returns within seconds, the values, tags and status are in the run directory,
    and the import command sends them (here to the SQLite store that holds the run)."""
    import logging

    from dqn_jax.tracking import MlflowTracker

    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    run_dir = tmp_path / "run"
    (run_dir / "rewards.csv").parent.mkdir()
    (run_dir / "rewards.csv").write_text("episode,states,reward,mean30\n")
    with caplog.at_level(logging.WARNING, logger="dqn_jax.tracking"):
        tracker = MlflowTracker(_dead_url(), run_id, flush_seconds=0.05, run_dir=run_dir)
        for step in range(1, 1501):
            tracker.log_metrics({"episode/score": step % 7, "episode/count": step}, step=step * 4)
            if step == 100:  # the sender notices the outage (the first try costs one retry budget)
                wait_for(lambda: tracker.sender.down_since is not None, "the outage", timeout=30)
            if step == 700:
                started = time.monotonic()
                tracker.flush()  # a checkpoint during the outage: kept in the file, no wait
                flush_seconds = time.monotonic() - started
                assert len(spool.read(spool.unsent_files(run_dir)[0])[1]) == 1400
        tracker.set_tags({"note": "outage"})
        tracker.log_artifact(run_dir / "rewards.csv")
        started = time.monotonic()
        tracker.finish("FINISHED")
        finish_seconds = time.monotonic() - started
    # a flush that waited for the store would take its retry budget (about 3 s) at least
    assert flush_seconds < 2.0 and finish_seconds < 15, (flush_seconds, finish_seconds)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("does not answer (connection refused)" in line for line in lines) == 1, lines
    (kept,) = [line for line in lines if "did not come back" in line]
    assert f"python -m dqn_jax.tracking import {run_dir}" in kept
    assert tracker.dropped_metrics == 0 and tracker.failures == 0
    (unsent,) = spool.unsent_files(run_dir)
    header, ops = spool.read(unsent)
    assert header == {"tracking_uri": tracker.tracking_uri, "run_id": run_id}
    assert [op[0] for op in ops[-3:]] == ["tags", "artifact", "status"] and len(ops) == 3003
    assert client.get_run(run_id).info.status == "RUNNING"  # nothing reached the store

    # the store is still away: the import keeps the file and says so in one line
    again = subprocess.run([sys.executable, "-m", "dqn_jax.tracking", "import", str(run_dir)],
                           capture_output=True, text=True, env=app_env())
    assert again.returncode == 1 and "is still away (connection refused)" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and unsent.exists()

    assert spool.main(["import", str(run_dir), "--tracking-uri", store]) == 0
    assert not spool.unsent_files(run_dir)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["note"] == "outage"
    counts = client.get_metric_history(run_id, "episode/count")
    assert sorted((m.step, m.value) for m in counts) == [(s * 4, float(s)) for s in range(1, 1501)]
    assert len(client.get_metric_history(run_id, "episode/score")) == 1500
    assert [a.path for a in client.list_artifacts(run_id)] == ["rewards.csv"]
    assert spool.main(["import", str(run_dir)]) == 0  # nothing left: says so, succeeds


def test_transient_errors_are_told_from_refusals(tmp_path):
    """Connection failures and a locked store are retried; a bad request is not."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    from dqn_jax.tracking import configure_http

    configure_http()  # the short retry budget
    client = MlflowClient(_dead_url())
    with pytest.raises(MlflowException) as refused:
        client.get_run("0" * 32)
    assert errors.is_transient(refused.value) and errors.reason(refused.value) == "connection refused"
    local = MlflowClient(f"sqlite:///{tmp_path / 'db.db'}")
    with pytest.raises(MlflowException) as missing:
        local.get_run("0" * 32)
    assert not errors.is_transient(missing.value)
    assert errors.is_transient(MlflowException("database is locked", error_code=TEMPORARILY_UNAVAILABLE))
    ops = [["metric", "a", 1.0, 0, i] for i in range(1500)] + [["tags", {}], ["metric", "a", 1.0, 0, 0]]
    assert [len(spool.batch_at(ops, i)) for i in (0, 1000, 1500, 1501)] == [1000, 500, 1, 1]


def test_send_unsent_before_a_resume(tmp_path, capsys):
    """tracking.send_unsent sends a run directory's unsent file to the store it names."""
    from omegaconf import OmegaConf

    from dqn_jax import config, tracking

    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("resume")).info.run_id
    run_dir = tmp_path / "run"
    spool.append(run_dir, store, run_id, [["metric", "episode/count", float(n), 1000 + n, n * 8]
                                          for n in range(1, 301)] + [["status", "KILLED", 2000]])
    cfg = OmegaConf.structured(config.Config)
    tracking.send_unsent(cfg, run_dir)
    assert capsys.readouterr().out == f"sent 301 MLflow operations an earlier run kept in {run_dir}\n"
    assert [m.step for m in client.get_metric_history(run_id, "episode/count")] == [n * 8 for n in range(1, 301)]
    assert client.get_run(run_id).info.status == "KILLED" and not spool.unsent_files(run_dir)
    tracking.send_unsent(cfg, run_dir)  # nothing left: nothing said
    assert capsys.readouterr().out == ""


def test_persist_keeps_what_is_queued_on_disk_until_the_sender_has_sent_it(tmp_path):
    """A checkpoint's persist(): the values are in the unsent file at once (a crash then loses
    none), the sender sends them and removes the file; sent again, MLflow stores them once."""
    from dqn_jax.tracking import MlflowTracker

    store = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("persist")).info.run_id
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    tracker = MlflowTracker(store, run_id, flush_seconds=1.0, run_dir=run_dir)
    for step in range(1, 51):
        tracker.log_metrics({"episode/count": step}, step=step * 2)
    tracker.persist()
    files = spool.unsent_files(run_dir)
    assert files and [op[2] for op in spool.read(files[0])[1]][:50] == [float(s) for s in range(1, 51)]
    copy = tmp_path / "copy.jsonl"
    copy.write_text(files[0].read_text())  # what a crash right after the send would leave
    wait_for(lambda: not spool.unsent_files(run_dir), "the sender to send and remove the file", 60)
    tracker.finish("FINISHED")
    spool.import_file(copy)  # a resume sending the file again
    history = client.get_metric_history(run_id, "episode/count")
    assert sorted((m.step, m.value) for m in history) == [(s * 2, float(s)) for s in range(1, 51)]


def test_a_store_locked_for_seconds_mid_run_loses_no_metric(tmp_path):
    """Another process holds the embedded SQLite store in an exclusive transaction for 6 s
    (a long query, a backup) while a run logs every 0.2 s: the run goes on, and every
    episode of its CSV log is in MLflow at the end, at its state count."""
    process = start_app([*CART, "steps=12000", "logger.flush_seconds=0.2", "name=locked"], cwd=tmp_path)
    rewards = tmp_path / "runs" / "cartpole" / "locked" / "rewards.csv"
    wait_for(lambda: rewards.exists() and len(_rows(rewards)) >= 10, "episodes", process=process)
    with sqlite3.connect(tmp_path / "mlruns.db", timeout=30, isolation_level=None) as db:
        db.execute("BEGIN EXCLUSIVE")
        assert process.poll() is None  # mid-run
        before = len(_rows(rewards))
        time.sleep(6)
        during = len(_rows(rewards))
        db.execute("COMMIT")
    assert during > before, "training waited for the store"
    assert process.wait(timeout=300) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    output = (tmp_path / "stdout.txt").read_text() + (tmp_path / "stderr.txt").read_text()
    assert "logging calls failed" not in output and "Traceback" not in output, output[-3000:]
    client = client_for(tmp_path)
    (run,), _ = runs_of(client, "dqn_jax/CartPole-v1")
    rows = _rows(rewards)
    assert run.info.status == "FINISHED" and len(rows) >= during
    assert history(client, run.info.run_id, "episode/score") == {(int(r["states"]), float(r["reward"])) for r in rows}
    assert history(client, run.info.run_id, "episode/count") == {(int(r["states"]), float(r["episode"])) for r in rows}

"""Sweeps end to end: real Hydra launches in subprocesses, real MLflow stores and server.

Each job is a tiny CartPole training run (the sweep machinery does not depend on the
game, and CartPole's episodes are short enough to give rewards in 200 states).
"""

from __future__ import annotations

import csv
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import (
    CART,
    CONF,
    background_process,
    checkpoint_steps,
    client_for,
    free_port,
    run_app,
    start_app,
    sweep_runs,
    tail,
    wait_for,
)

MULTIRUN = "hydra.mode=MULTIRUN"
CART = [*CART, "steps=200"]
EXPERIMENT = "dqn_jax/CartPole-v1"


def assert_ok(result) -> None:
    assert result.returncode == 0, tail(result)


def test_launcher_and_search_configs_compose():
    """Every launcher option and hparams_search recipe composes, with the fields users edit."""
    from hydra import compose, initialize_config_dir

    from dqn_jax.config import register_configs

    register_configs()
    launchers = sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml"))
    assert {"local_parallel", "slurm", "submitit_local_cpu", "ray_local", "ray_cluster"} <= set(launchers)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        seen = {}
        for name in launchers:
            cfg = compose("config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True)
            seen[name] = cfg.hydra
            assert "sweep_parent" in cfg.hydra.callbacks
        slurm = seen["slurm"].launcher
        assert slurm._target_.endswith("SlurmLauncher")
        for key in ("partition", "gpus_per_node", "cpus_per_task", "timeout_min", "mem_gb"):
            assert key in slurm
        assert seen["submitit_local_cpu"].launcher._target_.endswith("LocalLauncher")
        parallel = seen["local_parallel"]
        assert parallel.launcher._target_.endswith("JoblibLauncher")
        assert parallel.job.env_set.XLA_PYTHON_CLIENT_PREALLOCATE == "false"
        assert parallel.callbacks.job_resources.n_jobs == parallel.launcher.n_jobs
        assert seen["ray_local"].launcher.ray.init.address is None
        assert seen["ray_cluster"].launcher.ray.init.address == "auto"
        for recipe in sorted(p.stem for p in (CONF / "hparams_search").glob("*.yaml")):
            cfg = compose("config", overrides=[f"hparams_search={recipe}"], return_hydra_config=True)
            sweeper = cfg.hydra.sweeper
            assert sweeper._target_.endswith("OptunaSweeper"), recipe
            assert str(sweeper.direction).endswith("maximize") and sweeper.params, recipe
            assert cfg.objective in ("test/mean_score", "train/mean30"), recipe
            assert cfg.objective != "test/mean_score" or cfg.test_episodes_after_training > 0


def test_a_failing_job_fails_alone_and_the_sweep_says_so(tmp_path):
    """Job 0 is rejected by validation; job 1 still runs; the parent ends FAILED."""
    result = run_app([*CART, MULTIRUN, "memory.batch_size=0,16"], cwd=tmp_path)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("dqn_jax: error: sweep ") and "1 of 2 jobs failed" in last, last
    assert "job 0: ConfigError: memory.batch_size=0 is out of range" in last
    parent, children = sweep_runs(client_for(tmp_path))
    assert parent.info.status == "FAILED"
    assert parent.data.tags["dqn_jax.jobs_failed"] == "1"
    assert parent.data.tags["dqn_jax.jobs.1"] == "COMPLETED"
    failed, finished = children
    assert failed.info.status == "FAILED" and finished.info.status == "FINISHED"
    assert failed.data.tags["dqn_jax.overrides"] == "memory.batch_size=0"
    assert "memory.batch_size=0 is out of range" in failed.data.tags["dqn_jax.error"]
    client = client_for(tmp_path)
    assert "error.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}
    assert finished.data.params["memory.batch_size"] == "16"


def test_optuna_search_records_the_study_and_its_best_trial(tmp_path):
    result = run_app([*CART, "hparams_search=breakout_optuna", "steps=100",
                      "hydra.sweeper.n_trials=2", "test_episodes_after_training=2"], cwd=tmp_path)
    assert_ok(result)
    parent, children = sweep_runs(client_for(tmp_path))
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dqn_jax.sweeper"].endswith("OptunaSweeper")
    params = parent.data.params
    assert params["sweep.direction"] == "maximize" and params["sweep.objective"] == "test/mean_score"
    assert params["sweep.params.schedule.learning_rate.start"] == "tag(log, interval(1e-4, 3e-3))"
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    scores = {r.info.run_id: r.data.metrics["test/mean_score"] for r in children}
    assert parent.data.metrics["best_value"] == max(scores.values())
    best = next(r for r in children if r.info.run_id == parent.data.tags["dqn_jax.best_run_id"])
    assert scores[best.info.run_id] == max(scores.values())
    for key in ("schedule.learning_rate.start", "algorithm.discount", "schedule.epsilon.span"):
        assert float(params[f"best.{key}"]) == float(best.data.params[key])
        assert f"{key}=" in best.data.tags["dqn_jax.overrides"]
    assert (tmp_path / "runs" / "multirun" / parent.data.tags["dqn_jax.sweep_id"]
            / "optimization_results.yaml").is_file()


def test_a_job_through_submitits_local_executor(tmp_path):
    """A job in a process of its own, pickled and read back as on Slurm."""
    # choice(3): a sweep of one value, so the job's tags name it
    result = run_app([*CART, MULTIRUN, "hydra/launcher=submitit_local_cpu", "seed=choice(3)"],
                     cwd=tmp_path)
    assert_ok(result)
    parent, (child,) = sweep_runs(client_for(tmp_path))
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dqn_jax.launcher"].endswith("submitit_launcher.LocalLauncher")
    assert child.info.status == "FINISHED" and child.data.params["seed"] == "3"
    assert child.data.tags["dqn_jax.overrides"] == "seed=3"
    sweep_dir = tmp_path / "runs" / "multirun" / parent.data.tags["dqn_jax.sweep_id"]
    assert list((sweep_dir / ".submitit").glob("*/*_result.pkl")), "submitit ran no job"


@pytest.mark.slow
def test_jobs_through_a_local_ray(tmp_path):
    """About 1.5 minutes on 2 cores: starting Ray is most of it."""
    result = run_app([*CART, MULTIRUN, "hydra/launcher=ray_local", "hydra.launcher.ray.init.num_cpus=2",
                      "hydra.launcher.ray.remote.num_cpus=1", "seed=0,1"], cwd=tmp_path)
    assert_ok(result)
    parent, children = sweep_runs(client_for(tmp_path))
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dqn_jax.launcher"].endswith("RayLauncher")
    assert [r.data.params["seed"] for r in children] == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in children)


def _saved_checkpoints(sweep_dir: Path) -> list[Path]:
    """The jobs' complete checkpoints (a job stopped while saving leaves ``<states>.orbax-checkpoint-tmp``)."""
    return [p for p in sweep_dir.glob("*/checkpoints/*") if p.name.isdigit()]


@pytest.mark.parametrize("launcher", ["basic", "local_parallel"])
def test_ctrl_c_ends_a_sweep_with_its_runs_killed_and_its_relaunch_resumes(tmp_path, launcher):
    """SIGINT to the launching process once a job has checkpointed: status 130, no further
    job, every run closed KILLED. The basic launcher's job stops at its next safe point;
    the launching process of other launchers only waits, so it stops at once. The same
    command again runs every job: the interrupted one from its checkpoint, in its run."""
    sweep_dir = tmp_path / "sweep"
    sweep = [*CART, MULTIRUN, f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep_dir}", "seed=0,1,2"]
    process = start_app([*sweep, "steps=10000000"], cwd=tmp_path, pipe=True)
    wait_for(lambda: _saved_checkpoints(sweep_dir), "a job's checkpoint", process=process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    client = client_for(tmp_path)
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("dqn_jax.sweep") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "KILLED"
    assert children and len(children) < 3 and all(r.info.status == "KILLED" for r in children)

    # The budget it resumes with is spent already: the interrupted job only closes its run.
    job_dir = max(_saved_checkpoints(sweep_dir), key=lambda p: int(p.name)).parent.parent
    newest = checkpoint_steps(job_dir / "checkpoints")[-1]
    killed_run = (job_dir / "mlflow_run_id").read_text().strip()
    assert (sweep_dir / ".interrupted").exists()  # what the launch left: no job may start after a Ctrl-C
    again = run_app([*sweep, "steps=1"], cwd=tmp_path)
    assert_ok(again)
    assert "not started" not in again.stderr  # the earlier launch's Ctrl-C does not hold this one back
    new_parent = client.get_run((sweep_dir / "mlflow_run_id").read_text().strip())
    assert new_parent.info.run_id != parent.info.run_id and new_parent.info.status == "FINISHED"
    jobs = client.search_runs([new_parent.info.experiment_id],
                              f"tags.mlflow.parentRunId = '{new_parent.info.run_id}'")
    assert sorted(r.data.params["seed"] for r in jobs) == ["0", "1", "2"]
    assert all(r.info.status == "FINISHED" for r in jobs)
    # The job went on from its newest checkpoint in the run its directory names: the same run,
    # or (a job killed after logging past that checkpoint) a copy of it cut back to it.
    resumed = {r.info.run_id: r for r in jobs}[(job_dir / "mlflow_run_id").read_text().strip()]
    assert resumed.data.tags["dqn_jax.resumed_at_states"] == str(newest)
    assert resumed.data.metrics["train/states"] == newest
    if launcher == "basic":  # the job stopped at its next safe point: nothing was logged past it
        assert resumed.info.run_id == killed_run
    elif resumed.info.run_id != killed_run:
        killed = client.get_run(killed_run)
        assert killed.data.tags["dqn_jax.superseded_by"] == resumed.info.run_id
        assert killed.info.lifecycle_stage == "deleted"
        assert resumed.data.tags["dqn_jax.history_restarted_from"] == f"{killed_run} at {newest} states"


@pytest.fixture
def ray_cluster():
    """``ray start --head`` on this machine, as a cluster started beforehand; stopped after."""
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # Ray's socket paths must stay short
    port = free_port()
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
               "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
               f"--temp-dir={temp / 'ray'}", "--block"]
    try:
        with background_process(command, temp / "ray.log", "ray start", stop_timeout=90,
                                ready=lambda: "--block" in (temp / "ray.log").read_text()):
            yield f"127.0.0.1:{port}"
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_jobs_through_an_existing_ray_cluster(tmp_path, ray_cluster):
    """hydra/launcher=ray_cluster against a cluster it did not start (about 2 minutes)."""
    result = run_app([*CART, MULTIRUN, "hydra/launcher=ray_cluster",
                      f"hydra.launcher.ray.init.address={ray_cluster}",
                      "hydra.launcher.ray.remote.num_cpus=1", "hydra.launcher.ray.remote.num_gpus=0",
                      "seed=0,1"], cwd=tmp_path, env_extra={"RAY_AUTH_MODE": "token"})
    assert_ok(result)
    parent, children = sweep_runs(client_for(tmp_path))
    assert parent.info.status == "FINISHED"
    assert [r.data.params["seed"] for r in children] == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in children)


def test_a_sweep_sent_to_a_tracking_server_arrives_complete(tmp_path, mlflow_server):
    url, store = mlflow_server.url, mlflow_server.store
    project = tmp_path / "project"
    project.mkdir()
    result = run_app([*CART, MULTIRUN, f"logger.tracking_uri={url}", "seed=0,1"], cwd=project)
    assert_ok(result)
    client = MlflowClient(tracking_uri=url)
    parent, children = sweep_runs(client)
    assert parent.info.status == "FINISHED" and len(children) == 2
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["dqn_jax.sweep_id"] == parent.data.tags["dqn_jax.sweep_id"]
        history = client.get_metric_history(run.info.run_id, "episode/mean30")
        assert len(history) >= 2 and [m.step for m in history] == sorted(m.step for m in history)
        assert {"config.yaml", "rewards.csv", "checkpoints"} <= {
            a.path for a in client.list_artifacts(run.info.run_id)}
    stored = list((store / "artifacts").rglob("rewards.csv"))
    assert len(stored) == 2, "the artifacts did not reach the server's artifact store"
    assert not (project / "mlruns.db").exists() and not (project / "mlartifacts").exists()


def test_a_killed_launch_is_closed_killed_by_its_relaunch(tmp_path):
    """kill -9 of the launching process leaves its parent and its running job RUNNING;
    the next launch in the same hydra.sweep.dir closes them KILLED, saying why."""
    sweep_dir = tmp_path / "sweep"
    process = start_app([*CART, "steps=10000000", MULTIRUN, f"hydra.sweep.dir={sweep_dir}", "seed=0,1"],
                        cwd=tmp_path)
    wait_for(lambda: (sweep_dir / "0" / "mlflow_run_id").exists(), "job 0's run", process=process)
    process.kill()  # SIGKILL: no callback, no atexit, nothing closes the runs
    process.wait()
    client = client_for(tmp_path)
    killed_parent = (sweep_dir / "mlflow_run_id").read_text().strip()
    killed_child = (sweep_dir / "0" / "mlflow_run_id").read_text().strip()
    assert {client.get_run(r).info.status for r in (killed_parent, killed_child)} == {"RUNNING"}

    # (relaunching the same overrides would resume job 0's run; a fresh one keeps it KILLED here)
    again = run_app([*CART, MULTIRUN, f"hydra.sweep.dir={sweep_dir}", "checkpoint.resume=false", "seed=choice(5)"],
                    cwd=tmp_path)
    assert_ok(again)
    assert f"the earlier launch of sweep sweep was killed; its MLflow parent run {killed_parent} and " \
           "1 child run left RUNNING are now KILLED" in again.stderr
    for run_id in (killed_parent, killed_child):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.info.end_time is not None
        assert "ended without closing it (kill -9" in run.data.tags["dqn_jax.closed_reason"]
        assert "by a relaunch of the sweep" in run.data.tags["dqn_jax.closed_reason"]
    new_parent = client.get_run((sweep_dir / "mlflow_run_id").read_text().strip())
    assert new_parent.info.run_id != killed_parent and new_parent.info.status == "FINISHED"
    (child,) = client.search_runs([new_parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{new_parent.info.run_id}'")
    assert child.info.status == "FINISHED" and child.info.run_name == "seed=5"


def _episode_figures(client, children, sweep_dir: Path) -> tuple[int, int, int]:
    """(episode metric values logged: 4 per row of the jobs' rewards.csv, the least MLflow
    keeps, those in the store). MLflow keeps one of two equal values logged at the same step
    and millisecond: two games ending together with the same score (or epsilon, always)."""

    sent = kept = received = 0
    for run in children:
        job_dir = sweep_dir / run.data.tags["dqn_jax.job_num"]
        with open(job_dir / "rewards.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        counts = client.get_metric_history(run.info.run_id, "episode/count")
        assert sorted(m.value for m in counts) == [float(r["episode"]) for r in rows], job_dir
        scores = client.get_metric_history(run.info.run_id, "episode/score")
        assert {(m.step, m.value) for m in scores} == {(int(r["states"]), float(r["reward"])) for r in rows}
        sent += 4 * len(rows)
        kept += len(rows) + len({(r["states"], r["reward"]) for r in rows}) + len({r["states"] for r in rows}) \
            + len({(r["states"], r["mean30"]) for r in rows})
        received += sum(len(client.get_metric_history(run.info.run_id, key))
                        for key in ("episode/count", "episode/score", "episode/mean30", "episode/epsilon"))
    return sent, kept, received


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_four_parallel_jobs_lose_no_metric(tmp_path, store, request):
    """Four local_parallel jobs at once, each sending every 50 ms, to the embedded SQLite
    store or to a real mlflow server: every episode arrives, no "database is locked"."""
    extra, client = [], client_for(tmp_path)
    if store == "server":
        url = request.getfixturevalue("mlflow_server").url
        extra, client = [f"logger.tracking_uri={url}"], MlflowClient(url)
    sweep_dir = tmp_path / "sweep"
    result = run_app([*CART, "steps=3000", "logger.flush_seconds=0.05", *extra, MULTIRUN,
                      "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=4", f"hydra.sweep.dir={sweep_dir}",
                      "seed=0,1,2,3"], cwd=tmp_path)
    assert_ok(result)
    output = result.stdout + result.stderr
    assert "database is locked" not in output and "does not answer" not in output, output[-3000:]
    assert "logging calls failed" not in output, output[-3000:]
    parent, children = sweep_runs(client)
    assert parent.info.status == "FINISHED" and len(children) == 4
    assert all(r.info.status == "FINISHED" for r in children)
    sent, kept, received = _episode_figures(client, children, sweep_dir)
    print(f"\n{store}: 4 jobs, {sent} episode metric values logged, {kept} distinct, {received} in the store")
    assert kept <= received <= sent


def test_a_sweep_with_an_unreachable_store_stops_before_any_job(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_app([*CART, MULTIRUN, f"logger.tracking_uri={url}", "seed=0,1"], cwd=tmp_path)
    seconds = time.monotonic() - started
    assert result.returncode == 2 and seconds < 30, (result.returncode, seconds)
    assert result.stderr.strip().splitlines() == [
        f"dqn_jax: error: cannot reach the MLflow tracking server at {url} (connection refused); "
        "start it or use logger.tracking_uri=null for the embedded store, or logger=none"]
    assert list(tmp_path.iterdir()) == []  # no sweep directory, no job

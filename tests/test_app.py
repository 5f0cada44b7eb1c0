"""End to end, in subprocesses, on real ale-py games and a real MLflow store."""

from __future__ import annotations

import csv
import re
import signal
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import (
    TINY,
    checkpoint_steps,
    client_for,
    history,
    run_app,
    runs_of,
    start_app,
    tail,
    wait_for,
)


def new_test_run(client, since_ms: int):
    """The one test run started after ``since_ms`` (other tests test the same checkpoint)."""
    (run,) = [r for r in runs_of(client)[1] if r.info.start_time >= since_ms]
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run on Breakout (800 states), shared by the tests below."""
    root = tmp_path_factory.mktemp("e2e")
    result = run_app([*TINY, "steps=800", "name=e2e"], cwd=root)
    assert result.returncode == 0, tail(result)
    return root, result


def test_training_run_is_in_mlflow_with_params_metrics_and_artifacts(trained):
    root, result = trained
    client = client_for(root)
    (run,), _ = runs_of(client)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["memory.size"] == "256"
    assert params["env.game"] == "breakout"
    assert params["derived.num_envs"] == "2"
    assert params["schedule.learning_rate.start"] == "0.001"
    metrics = run.data.metrics
    for name in ("episode/score", "episode/mean30", "episode/epsilon", "cycle/loss",
                 "cycle/iterations", "cycle/learning_rate", "cycle/loss_limit",
                 "cycle/replay_fraction", "q/mean", "q/std", "cycle/high_error_share",
                 "cycle/states_per_second", "train/states"):
        assert name in metrics, name
    assert metrics["train/states"] >= 800
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "rewards.csv", "q_values.csv", "checkpoints", "analysis"} <= artifacts
    with open(root / "runs/breakout/e2e/rewards.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows  # every episode is in MLflow, at its state count, as in the CSV log
    assert history(client, run.info.run_id, "episode/score") == {(int(r["states"]), float(r["reward"])) for r in rows}
    assert history(client, run.info.run_id, "episode/count") == {(int(r["states"]), float(r["episode"])) for r in rows}
    assert "training stopped (budget)" in result.stdout


def test_a_training_run_logs_its_training_curves(trained):
    """The picture drawn at the end of every run (and every 5 minutes during it), as an
    artifact of the run: a figure of several panels, not an empty canvas."""
    root, _ = trained
    client = client_for(root)
    (run,), _ = runs_of(client)
    assert {a.path for a in client.list_artifacts(run.info.run_id, "analysis")} == {"analysis/training-curves.png"}
    picture = Image.open(client.download_artifacts(run.info.run_id, "analysis/training-curves.png",
                                                   str(root / "downloaded"))).convert("L")
    pixels = np.asarray(picture)
    assert min(picture.size) > 300 and (pixels < 128).mean() > 0.01  # lines and text drawn


def test_rerun_resumes_counters_from_the_checkpoint(trained):
    root, _ = trained
    client = client_for(root)
    (before,), _ = runs_of(client)
    states_before = before.data.metrics["train/states"]
    episodes_before = before.data.metrics["train/episodes"]
    result = run_app([*TINY, "steps=1200", "name=e2e"], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(rf"resuming from .*: {int(states_before)} states", result.stdout)
    (after,), _ = runs_of(client)
    assert after.info.run_id == before.info.run_id  # the same MLflow run continues
    assert after.data.metrics["train/states"] >= 1200
    assert after.data.metrics["train/episodes"] >= episodes_before
    counts = [m.value for m in client.get_metric_history(after.info.run_id, "episode/count")]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)  # episodes keep counting


def test_test_mode_reports_the_tutorials_statistics(trained):
    root, _ = trained
    since = int(time.time() * 1000)
    # epsilon 1: random play ends each game by losing its lives, within a few hundred steps
    result = run_app([*TINY, "mode=test", "episodes=2", "name=e2e", "progress=true", "schedule.epsilon_test=1.0"],
                     cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = dict(re.findall(r"^  (\w+) +([-\d.]+)$", result.stdout, re.M))
    client = client_for(root)
    (train_run,), _ = runs_of(client)
    test_run = new_test_run(client, since)
    assert test_run.data.tags["mlflow.parentRunId"] == train_run.info.run_id
    metrics = test_run.data.metrics
    assert metrics["test/episodes"] == 2 and float(printed["episodes"]) == 2
    for name in ("min_score", "mean_score", "max_score", "std_score"):
        assert float(printed[name]) == pytest.approx(metrics[f"test/{name}"], abs=1e-3), name
    assert metrics["test/min_score"] <= metrics["test/mean_score"] <= metrics["test/max_score"]
    finals = [float(r) for r in re.findall(r"lives 0  reward +([-\d.]+)", result.stdout)]
    assert len(finals) == 2 and np.mean(finals) == pytest.approx(metrics["test/mean_score"])


@pytest.mark.parametrize("algorithm", [
    [], ["algorithm=dqn", "algorithm.warmup=100", "algorithm.report_every=200", "memory.batch_size=8"]],
    ids=["hvass", "dqn"])
def test_ctrl_c_saves_a_checkpoint_and_ends_with_one_line(tmp_path, algorithm):
    """SIGINT once training has checkpointed: status 130, one line, no traceback, a KILLED
    MLflow run and complete checkpoints that the same command resumes from."""
    process = start_app([*TINY, *algorithm, "steps=1000000", "name=ctrlc"], cwd=tmp_path, pipe=True)
    checkpoints = tmp_path / "runs" / "breakout" / "ctrlc" / "checkpoints"
    wait_for(lambda: checkpoint_steps(checkpoints), "a checkpoint", process=process)
    time.sleep(0.5)  # somewhere in playing, learning or saving
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("dqn_jax: interrupted")
    assert "training stopped (interrupt)" in stdout
    steps = checkpoint_steps(checkpoints)
    assert steps and not [p for p in checkpoints.iterdir() if not p.name.isdigit()]  # no half-written one
    (run,), _ = runs_of(client_for(tmp_path))
    assert run.info.status == "KILLED"
    assert int(run.data.metrics["train/states"]) == steps[-1]  # the last state played is saved
    resumed = run_app([*TINY, *algorithm, f"steps={steps[-1] + 60}", "name=ctrlc", "logger=none"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {checkpoints}: {steps[-1]} states" in resumed.stdout


def test_test_mode_video_has_a_frame_per_step_and_is_logged_to_the_test_run(trained):
    import imageio.v2 as imageio

    root, _ = trained
    since = int(time.time() * 1000)
    # Random play (epsilon 1) presses FIRE and loses its lives in a few hundred steps, where the
    # untrained greedy agent may never launch the ball and play to the frame limit (27,000 steps).
    result = run_app([*TINY, "mode=test", "episodes=1", "env.num_envs=1", "name=e2e", "video=true",
                      "video_gif=true", "schedule.epsilon_test=1.0", "env.max_episode_frames=8000"], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    client = client_for(root)
    test_run = new_test_run(client, since)
    steps = int(test_run.data.metrics["test/states"])  # one game: a state per step
    video = root / "runs/breakout/e2e/test-video-1.mp4"
    reader = imageio.get_reader(video)
    frames = reader.count_frames()
    first, last = reader.get_data(0), reader.get_data(frames - 1)
    reader.close()
    assert frames == steps > 10 and first.shape[1] > first.shape[0]  # the frame and its Q-value panel
    assert (np.abs(first.astype(int) - last.astype(int)) > 40).sum() > 100  # the game moved, not codec noise
    logged = {a.path for a in client.list_artifacts(test_run.info.run_id, "videos")}
    assert logged == {"videos/test-video-1.mp4", "videos/test-video-1.gif"}


@pytest.mark.parametrize("name", ["hvass", "dqn", "double_dqn"])
def test_a_run_logs_only_its_algorithms_settings_and_signals(name):
    """The tutorial's keys are not a DQN run's params, nor DQN's a tutorial run's."""
    from types import SimpleNamespace

    from dqn_jax import algorithms, app
    from tests.conftest import compose_config

    cfg = compose_config([*TINY, f"algorithm={name}"])
    params = app.run_params(cfg, SimpleNamespace(num_envs=2, num_actions=4), algorithms.ALGORITHMS[name])
    tutorial = {"algorithm.error_threshold", "algorithm.min_epochs", "algorithm.target_method",
                "schedule.loss_limit.start", "schedule.max_epochs.end", "schedule.replay_fraction.span"}
    dqn = {"algorithm.warmup", "algorithm.train_every", "algorithm.target_copy_states", "algorithm.n_step", "algorithm.huber_delta"}
    ours, theirs = (tutorial, dqn) if name == "hvass" else (dqn, tutorial)
    assert ours <= set(params) and not theirs & set(params)
    assert params["algorithm.name"] == name and params["schedule.epsilon.start"] == "1.0"
    assert params["optimizer.centered"] == str(name != "hvass")  # DeepMind's RMSProp for DQN
    assert (params["derived.num_envs"], params["derived.num_actions"]) == ("2", "4")

"""Long runs lose nothing: divergence, kill -9, a corrupt checkpoint, bad input (end to end).

Real training subprocesses on tiny settings, real Orbax checkpoints, a real MLflow store.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from dqn_jax.runner.faults import FAILURE_TAG, all_finite
from tests.conftest import (
    TINY,
    app_command,
    app_env,
    client_for,
    read_csv,
    restore_newest,
    run_app,
    runs_of,
)
from tests.conftest import checkpoint_steps as steps_of


def training_runs(root) -> list:
    return runs_of(client_for(root))[0]


def test_divergence_stops_the_run_failed_and_keeps_the_last_good_checkpoint(tmp_path):
    good = run_app([*TINY, "steps=300", "name=div", "memory.size=257"], cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-3000:]
    assert "memory.size=257 holds 256 states: a whole number of rows of 2 games" in good.stdout
    checkpoints = tmp_path / "runs" / "breakout" / "div" / "checkpoints"
    before = steps_of(checkpoints)
    diverging = ["schedule.learning_rate.start=1e30", "schedule.learning_rate.end=1e30"]
    result = run_app([*TINY, "steps=2000", "name=div", "memory.size=257", *diverging], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "learning rate 1e+30" in line and "loss limit 0.1" in line and "try a smaller" in line
    assert steps_of(checkpoints) == before  # no checkpoint after the last good one
    train_state, counters = restore_newest(tmp_path, checkpoints)
    assert counters["states"] == before[-1] and all_finite(train_state.params)
    assert line.startswith(f"dqn_jax: error: training diverged in learning cycle {counters['cycles'] + 1} at ")
    (run,) = training_runs(tmp_path)
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILURE_TAG] == line.removeprefix("dqn_jax: error: ")


def test_a_diverging_dqn_run_stops_failed_naming_its_learning_rate_alone(tmp_path):
    """DQN's cycle is checked as the tutorial's is: its batch loss, Q-values and network."""
    args = [*TINY, "algorithm=dqn", "algorithm.warmup=100", "algorithm.report_every=200", "memory.batch_size=8",
            "name=div"]
    good = run_app([*args, "steps=400"], cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-3000:]
    checkpoints = tmp_path / "runs" / "breakout" / "div" / "checkpoints"
    assert steps_of(checkpoints) == [200, 400]
    diverging = ["schedule.learning_rate.start=1e30", "schedule.learning_rate.end=1e30"]
    result = run_app([*args, "steps=2000", *diverging], cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    # resumed at 400 states, it warms up again for 100 and steps for the rest of cycle 3
    assert line.startswith("dqn_jax: error: training diverged in learning cycle 3 at 600 states: ")
    assert "(learning rate 1e+30); no checkpoint was written after the last good one" in line
    assert steps_of(checkpoints) == [200, 400]
    (run,) = training_runs(tmp_path)
    assert run.info.status == "FAILED" and run.data.tags[FAILURE_TAG] == line.removeprefix("dqn_jax: error: ")


def _launch(root: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(app_command(args, root), cwd=root, env=app_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _kill_at(process: subprocess.Popen, checkpoints: Path, moment: str) -> None:
    """SIGKILL once a new checkpoint is written: mid-save, just after it, or while playing."""
    known, deadline = steps_of(checkpoints), time.monotonic() + 300
    while steps_of(checkpoints) == known:
        assert process.poll() is None and time.monotonic() < deadline, "no new checkpoint"
        if moment == "saving" and checkpoints.is_dir() and any("tmp" in p.name for p in checkpoints.iterdir()):
            break
        time.sleep(0.005)
    if moment == "playing":
        time.sleep(1.0)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _cut_saves(checkpoints: Path) -> list[str]:
    """What a save cut short leaves: ``<states>.orbax-checkpoint-tmp...``."""
    return [p.name for p in checkpoints.iterdir() if "tmp" in p.name] if checkpoints.is_dir() else []


def test_kill_9_at_any_moment_then_resume_logs_every_episode_once(tmp_path):
    args = [*TINY, "steps=1600", "name=crash"]
    run_dir = tmp_path / "runs" / "breakout" / "crash"
    checkpoints = run_dir / "checkpoints"
    for _ in range(5):  # the kill must land inside a save: try again if the save won the race
        _kill_at(_launch(tmp_path, args), checkpoints, "saving")
        if _cut_saves(checkpoints):
            break
    assert _cut_saves(checkpoints), "no kill -9 landed inside a checkpoint save in 5 tries"
    for moment in ("saved", "playing"):
        _kill_at(_launch(tmp_path, args), checkpoints, moment)
    newest = steps_of(checkpoints)[-1]
    for path in (checkpoints / str(newest) / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\0garbage")  # and the newest checkpoint is damaged on disk
    result = run_app(args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"the checkpoint at {newest} states cannot be read" in result.stdout
    assert (run_dir / "corrupt-checkpoints" / str(newest)).is_dir()

    rewards = read_csv(run_dir / "rewards.csv")
    episodes = [int(r["episode"]) for r in rewards]
    assert episodes == list(range(1, len(rewards) + 1))  # no episode twice, none missing
    states = [int(r["states"]) for r in rewards]
    assert states == sorted(states)
    swept = [int(r["states"]) for r in read_csv(run_dir / "q_values.csv")]
    assert swept == sorted(set(swept))  # one row per learning cycle
    (run,) = training_runs(tmp_path)  # the crashed histories were replaced, not added to
    assert run.info.status == "FINISHED"
    assert run.data.metrics["train/episodes"] == len(rewards)
    client = client_for(tmp_path)
    counts = [(m.step, int(m.value)) for m in client.get_metric_history(run.info.run_id, "episode/count")]
    assert sorted(counts) == list(zip(states, episodes, strict=True))
    scores = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "episode/score")]
    # (MLflow stores two equal values logged at one step in the same millisecond once)
    assert len(scores) == len(set(scores)) == len({(int(r["states"]), r["reward"]) for r in rewards})
    assert set(scores) == {(int(r["states"]), float(r["reward"])) for r in rewards}
    cycles = sorted(m.step for m in client.get_metric_history(run.info.run_id, "cycle/count"))
    assert cycles == swept


@pytest.mark.parametrize("bad", [["env.game=breakou"], ["memory.size=100000000"], ["mode=test"],
                                 ["memory.batch_size=512"]])
def test_a_rejected_command_leaves_nothing_behind(tmp_path, bad):
    result = run_app([*TINY, *bad], cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dqn_jax: error: "), result.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no run directory, no MLflow store
    if bad == ["memory.size=100000000"]:
        largest = int(lines[0].rsplit(" ", 1)[1])
        assert 2 <= largest < 100_000_000 and largest * 16_830 < 0.9 * _free_bytes()


def _free_bytes() -> int:
    import psutil

    return psutil.virtual_memory().available + 2**30  # it may have moved a little since

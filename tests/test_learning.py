"""It learns: each algorithm, run end to end in a subprocess.

* CartPole-v1 with the MLP (CI, a few minutes on 2 CPU cores): the recipes
  ``experiment=cartpole`` (the tutorial's method), ``experiment=cartpole_dqn``,
  ``experiment=cartpole_dqn algorithm=double_dqn`` and ``experiment=cartpole_sweep_dqn``
  (the tutorial's sweep inside DQN) must each reach a mean of at least 400
  over 20 test episodes (random play: about 22; the episode limit: 500).
* Breakout on the CPU with a small CNN (``make test-slow``): the recipe
  ``experiment=breakout_cpu_check`` must beat random play by a clear margin.
* The evaluation protocol: ``mode=test test_checkpoints=all`` tests every kept
  checkpoint and logs one score per checkpoint, at its state count, to a child run.

Scores are read back from the MLflow store the run wrote, not from its console.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import BREAKOUT, CARTPOLE, client_for, run_app, runs_of, start_app, tail

# Chosen from five seeds of each recipe on one machine (docs/results.md, "The seeds behind
# the CI bar"): the worst test means were 469 (the tutorial's method), 490 (DQN),
# 500 (Double DQN) and 480.6 (the sweep inside DQN). A run is deterministic on one
# machine but not across machines (XLA's floating point and thread count differ: one seed
# of Double DQN gave 498 here and 437 on another VM), so the bar sits about 15 % under the
# worst seed. 400 still means the pole is balanced for most of an episode: random play
# averages about 22.
CARTPOLE_BAR = 400.0


def _runs(root, experiment: str):
    """(training runs, test runs) of an experiment in the store under ``root``."""
    return runs_of(client_for(root), experiment)


CARTPOLE_RECIPES = ["experiment=cartpole", "experiment=cartpole_dqn", "experiment=cartpole_dqn algorithm=double_dqn",
                    "experiment=cartpole_sweep_dqn"]


@pytest.fixture(scope="module")
def cartpole_runs(tmp_path_factory) -> dict:
    """The four CartPole recipes, run side by side: each keeps about one core busy (a
    small MLP, the games' Python loop), so on 2 cores the four take about the time of
    two or three one after the other. Results are the same as run alone (a run is deterministic)."""
    started = {}
    for recipe in CARTPOLE_RECIPES:
        root = tmp_path_factory.mktemp("cartpole")
        started[recipe] = (root, start_app(recipe.split(), cwd=root), time.perf_counter())
    finished = {}
    for recipe, (root, process, start) in started.items():
        process.wait(timeout=1500)
        finished[recipe] = (root, process.returncode, time.perf_counter() - start)
    return finished


@pytest.mark.parametrize("recipe", CARTPOLE_RECIPES)
def test_cartpole_learns_to_balance(cartpole_runs, recipe):
    """Each algorithm's CartPole recipe (the tutorial's method, DQN, Double DQN, the sweep inside DQN)."""
    root, returncode, wall = cartpole_runs[recipe]
    output = (root / "stdout.txt").read_text()[-3000:] + (root / "stderr.txt").read_text()[-3000:]
    assert returncode == 0, output
    (run,), _ = _runs(root, CARTPOLE)
    metrics = run.data.metrics
    print(f"\n{recipe}: {metrics['train/states']:.0f} states, {wall:.0f} s (beside the others), test over "
          f"{metrics['test/episodes']:.0f} episodes: mean {metrics['test/mean_score']:.1f}, "
          f"min {metrics['test/min_score']:.0f}")
    assert metrics["test/episodes"] == 20
    assert metrics["test/mean_score"] >= CARTPOLE_BAR, output


@pytest.mark.slow
def test_breakout_on_a_cpu_beats_random_play(tmp_path):
    """About 7 minutes on 2 CPU cores: 300,000 states, then 30 test episodes.

    Random play is measured on the same games (same settings, seed and test protocol)
    by testing the trained checkpoint with epsilon 1.
    """
    start = time.perf_counter()
    trained = run_app(["experiment=breakout_cpu_check"], cwd=tmp_path, timeout=1800)
    wall = time.perf_counter() - start
    assert trained.returncode == 0, tail(trained)
    randomly = run_app(["experiment=breakout_cpu_check", "mode=test", "schedule.epsilon_test=1.0",
                        "episodes=30"], cwd=tmp_path, timeout=600)
    assert randomly.returncode == 0, tail(randomly)
    (run,), (random_run,) = _runs(tmp_path, BREAKOUT)
    agent, chance = run.data.metrics, random_run.data.metrics
    assert agent["test/episodes"] == chance["test/episodes"] == 30
    bar = max(2 * chance["test/mean_score"], chance["test/mean_score"] + 3 * chance["test/std_score"])
    print(f"\nbreakout: {agent['train/states']:.0f} states, {wall:.0f} s; test mean "
          f"{agent['test/mean_score']:.2f} (std {agent['test/std_score']:.2f}) against random "
          f"{chance['test/mean_score']:.2f} (std {chance['test/std_score']:.2f}); bar {bar:.2f}")
    assert agent["test/mean_score"] >= bar, tail(trained)


def test_every_kept_checkpoint_gets_a_test_score(tmp_path):
    """The score-over-training curve: one test/mean_score point per kept checkpoint."""
    tiny_cartpole = [
        "env=cartpole", "network=mlp", "network.dense=[16]", "memory.size=128",
        "memory.batch_size=16", "env.num_envs=2", "schedule.max_epochs.start=1",
        "schedule.max_epochs.end=1", "schedule.replay_fraction.start=0.5", "progress=false",
        "name=curve", "checkpoint.keep=5",
    ]
    trained = run_app([*tiny_cartpole, "steps=1000"], cwd=tmp_path)
    assert trained.returncode == 0, tail(trained)
    checkpoints = tmp_path / "runs/cartpole/curve/checkpoints"
    kept = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert len(kept) == 5, kept  # more cycles than kept: the oldest were deleted

    tested = run_app([*tiny_cartpole, "mode=test", "test_checkpoints=all", "episodes=2"],
                     cwd=tmp_path)
    assert tested.returncode == 0, tail(tested)
    (train_run,), test_runs = _runs(tmp_path, CARTPOLE)
    (test_run,) = test_runs
    assert test_run.data.tags["mlflow.parentRunId"] == train_run.info.run_id
    history = client_for(tmp_path).get_metric_history(test_run.info.run_id, "test/mean_score")
    assert sorted(m.step for m in history) == kept
    episodes = client_for(tmp_path).get_metric_history(test_run.info.run_id, "test/episodes")
    assert [m.value for m in episodes] == [2.0] * len(kept)
    for name in ("test/min_score", "test/max_score", "test/std_score"):
        assert len(client_for(tmp_path).get_metric_history(test_run.info.run_id, name)) == len(kept)

"""The analysis of a DQN run shows DQN's targets: a tiny real Breakout run, played again."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from dqn_jax.analyze import command as analyze
from dqn_jax.analyze import probe
from dqn_jax.analyze.saved_run import SavedRun
from dqn_jax.config import num_envs
from dqn_jax.envs import make_games
from tests.conftest import TINY, run_app

DISCOUNT = 0.9


@pytest.fixture(scope="module")
def dqn_run(tmp_path_factory):
    """400 states of DQN: 75 gradient steps after the warm-up, no copy into the target
    network, so its values differ from the network's."""
    root = tmp_path_factory.mktemp("probe")
    result = run_app([*TINY, "algorithm=dqn", "algorithm.warmup=100", "algorithm.report_every=200",
                      "algorithm.target_copy_states=4000", "memory.batch_size=8", f"algorithm.discount={DISCOUNT}",
                      "steps=400", "name=dqn"], cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "runs" / "breakout" / "dqn"


def reference_targets(network, train_state, states, rewards, ended, double: bool) -> np.ndarray:
    """r + discount * V(s') state by state, 0 after a life or an episode ends; ``states``
    has one row more than ``rewards`` (the next states)."""
    rows, games = rewards.shape
    expected = np.zeros((rows, games))
    for t in range(rows):
        for g in range(games):
            following = states[t + 1, g][None]
            q_target = np.asarray(network.apply(train_state.target_params, following))[0]
            q_online = np.asarray(network.apply(train_state.params, following))[0]
            value = q_target[np.argmax(q_online)] if double else q_target.max()
            expected[t, g] = rewards[t, g] + (0.0 if ended[t, g] else DISCOUNT * value)
    return expected


def _with_algorithm(cfg, name: str):
    """The run's config with algorithm ``name`` (its own group; the run's discount kept)."""
    from dqn_jax.config import ALGORITHM_SCHEMAS

    return dataclasses.replace(cfg, algorithm=ALGORITHM_SCHEMAS[name](name=name, discount=cfg.algorithm.discount))


@pytest.mark.parametrize("algorithm", ["dqn", "double_dqn"])
def test_a_dqn_memory_gets_the_td_targets_of_its_target_network(dqn_run, algorithm):
    run = SavedRun(dqn_run)
    with make_games(run.cfg.env, num_envs(run.cfg.env), 0) as games:
        network, train_state, counters = run.restore(games)
        played = {name: probe.play_memory(_with_algorithm(run.cfg, name), games, network, train_state,
                                          counters["states"], size=40, seed=0)
                  for name in (algorithm, "hvass")}
    snapshot, whole = played[algorithm], played["hvass"]  # the same play: the same seed and network
    assert counters["states"] == 400
    assert whole.actions.shape == (20, 2) and snapshot.actions.shape == (19, 2)  # the last row has no next state
    assert np.array_equal(snapshot.states, whole.states[:-1])
    state = whole.states[1, 0][None]
    assert not np.allclose(network.apply(train_state.params, state), network.apply(train_state.target_params, state))
    ended = snapshot.end_life | snapshot.end_episode
    expected = reference_targets(network, train_state, whole.states, snapshot.rewards, ended,
                                 double=algorithm == "double_dqn")
    taken = np.take_along_axis(snapshot.targets, snapshot.actions[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(taken, expected, rtol=1e-5, atol=1e-6)
    estimate = np.take_along_axis(snapshot.estimates, snapshot.actions[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(snapshot.errors, np.abs(expected - estimate), rtol=1e-5, atol=1e-6)
    others = np.ones_like(snapshot.targets, bool)
    np.put_along_axis(others, snapshot.actions[..., None], False, axis=-1)
    assert np.array_equal(snapshot.targets[others], snapshot.estimates[others])  # only the action taken has a target


def test_the_analysis_of_a_dqn_run_draws_its_td_errors(dqn_run):
    assert analyze.main([str(dqn_run), "states=4", "memory=40", "episodes=0", "log=false"]) == 0
    summary = json.loads((dqn_run / "analysis" / "summary.json").read_text())
    records = summary["states"]["states-largest-error"]
    assert len(records) == 4
    for record in records:
        assert record["error"] == pytest.approx(abs(record["target"] - record["q"][record["action"]]), abs=1e-5)
    assert (dqn_run / "analysis" / "states-largest-error.png").stat().st_size > 10_000

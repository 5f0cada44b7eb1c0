"""The agent's own logic: when learning starts, and the shape of what it stores."""

from __future__ import annotations

import numpy as np
import pytest

from dqn_jax.algorithms.hvass.algorithm import rows_before_learning
from dqn_jax.config import EnvConfig
from dqn_jax.core.acting import state_spec
from dqn_jax.core.schedules import linear_signal


def per_step_reference(start, end, span, count, steps, games):
    """The tutorial's check after every recorded step: full, or used fraction > signal."""
    for rows in range(1, steps + 1):
        count += games
        fraction = start + (end - start) * min(count, span) / span
        if rows >= steps or rows / steps > fraction:
            return rows
    raise AssertionError("unreachable")


@pytest.mark.parametrize("count", [0, 123_456, 4_999_000, 9_000_000])
@pytest.mark.parametrize("steps, games", [(100, 8), (25_000, 8), (1_000, 1)])
def test_rows_before_learning_matches_the_per_step_check(count, steps, games):
    signal = linear_signal(0.1, 1.0, 5e6)
    expected = per_step_reference(0.1, 1.0, 5e6, count, steps, games)
    assert rows_before_learning(signal, count, steps, games) == expected


def test_state_spec_frames_with_trace_or_vectors():
    assert state_spec(EnvConfig(), (105, 80), np.uint8) == ((105, 80, 2), np.dtype(np.uint8))
    assert state_spec(EnvConfig(encoding="frame"), (105, 80), np.uint8)[0] == (105, 80, 1)
    vec = EnvConfig(kind="gymnasium", encoding="frame")
    assert state_spec(vec, (4,), np.float32) == ((4,), np.dtype(np.float32))


def test_test_plays_every_episode_unless_given_a_state_limit(tmp_path):
    """The after-training test is not cut short by the training budget ``steps=``."""
    import jax
    import jax.numpy as jnp

    from dqn_jax.config import NetworkConfig
    from dqn_jax.core.acting import Player
    from dqn_jax.core.networks import make_network
    from dqn_jax.envs import make_games
    from dqn_jax.runner.testing import test
    from tests.conftest import compose_config

    cfg = compose_config(["env=cartpole", "steps=20", "progress=false"], tmp_path)
    games = make_games(cfg.env, 2, seed=0)
    network = make_network(NetworkConfig(name="mlp", dense=[8]), games.num_actions)
    params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
    player = Player(network, cfg.env, linear_signal(1.0, 1.0, 1))  # random play: episodes of ~20 states
    try:
        full = test(games=games, player=player, params=params, key=jax.random.PRNGKey(1), episodes=4, progress=cfg.progress)
        capped = test(games=games, player=player, params=params, key=jax.random.PRNGKey(1), episodes=4,
                      max_states=cfg.steps)
    finally:
        games.close()
    assert full["episodes"] == 4 and full["states"] > cfg.steps
    assert capped["states"] <= cfg.steps + games.num_envs and capped["episodes"] < 4


def test_test_mode_lines_number_each_episode_once_and_show_the_last_30_mean(tmp_path, capsys):
    """Real Breakout, random play: the tutorial's test lines, read back as values."""
    import re

    import jax

    from dqn_jax.core.acting import Player
    from dqn_jax.core.networks import make_network
    from dqn_jax.envs import make_games
    from dqn_jax.runner.testing import test
    from tests.conftest import TINY, compose_config

    cfg = compose_config([*TINY, "progress=true"], tmp_path)
    games = make_games(cfg.env, 2, seed=0)
    network = make_network(cfg.network, games.num_actions)
    shape, dtype = state_spec(cfg.env, games.observation_shape, games.observation_dtype)
    params = network.init(jax.random.PRNGKey(0), np.zeros((1, *shape), dtype))
    player = Player(network, cfg.env, linear_signal(1.0, 1.0, 1))
    try:
        stats = test(games=games, player=player, params=params, key=jax.random.PRNGKey(1), episodes=4, progress=cfg.progress)
    finally:
        games.close()
    pattern = re.compile(r"game +(\d+) episode +(\d+):\d+ .* lives (\d+)  reward +([-\d.]+)  "
                         r"mean of last 30 +([-\d.]+)")
    lines = [pattern.search(line).groups() for line in capsys.readouterr().out.splitlines()]
    game_of, lives_of, finished = {}, {}, []
    for game, episode, lives, reward, mean in lines:
        assert game_of.setdefault(episode, game) == game  # one episode number, one game
        assert int(lives) <= lives_of.get(episode, 5)  # lives only go down within an episode
        lives_of[episode] = int(lives)
        if int(lives) == 0:  # the episode's last line: game over
            finished.append(float(reward))
            assert float(mean) == pytest.approx(np.mean(finished[-30:]), abs=0.006)
    assert sorted(int(e) for e in game_of) == [1, 2, 3, 4] and set(lives_of.values()) == {0}
    assert len(finished) == stats["episodes"] == 4
    assert np.mean(finished) == pytest.approx(stats["mean_score"])

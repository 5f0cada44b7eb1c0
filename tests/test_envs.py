"""dqn_jax.envs against real ale-py games and a real Gymnasium CartPole."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dqn_jax.config import ConfigError, EnvConfig
from dqn_jax.envs import Games, GameStep, atari_games, check_game, make_games, normalise_game


def _games(num_envs: int = 2, seed: int = 0, **env) -> Games:
    return make_games(EnvConfig(**env), num_envs, seed)


def test_breakout_frames_actions_and_lives():
    with _games() as games:
        assert games.num_envs == 2
        assert games.num_actions == 4
        assert games.action_names == ["NOOP", "FIRE", "RIGHT", "LEFT"]
        assert games.observation_shape == (105, 80)
        assert games.observation_dtype == np.uint8
        frames, lives = games.reset(seed=0)
        assert frames.shape == (2, 105, 80) and frames.dtype == np.uint8
        assert frames.max() > 0  # a real picture, not an empty buffer
        assert lives.dtype == np.int32 and lives.tolist() == [5, 5]
        step = games.step(np.array([1, 3]))
        assert isinstance(step, GameStep)
        assert step.frames.shape == (2, 105, 80) and step.frames.dtype == np.uint8
        assert step.rewards.shape == (2,) and step.rewards.dtype == np.float32
        assert step.terminated.dtype == bool and step.truncated.dtype == bool
        assert step.lives.dtype == np.int32


def test_rewards_are_raw_not_clipped():
    # Space Invaders pays 5 to 30 points per invader; clipping would give 1.
    with _games(game="space_invaders", seed=0) as games:
        games.reset()
        best = 0.0
        for _ in range(300):
            best = max(best, float(games.step(np.ones(2, np.int32)).rewards.max()))
            if best > 1:
                break
        assert best > 1


def test_same_step_autoreset_returns_first_frame_of_next_episode():
    # 400 frames = 100 steps at frameskip 4; FIRE launches the ball, which is missed.
    with _games(max_episode_frames=400, repeat_action_probability=0.0) as games:
        first, lives = games.reset(seed=0)
        lost_life = False
        for t in range(100):
            step = games.step(np.full(2, 1 if t < 3 else 0))
            lost_life |= bool((step.lives < 5).any())
            if t < 99:
                assert not step.ended.any()
        assert lost_life
        assert step.truncated.all() and not step.terminated.any()
        # the returned frame and lives already belong to the new episode
        np.testing.assert_array_equal(step.frames, first)
        np.testing.assert_array_equal(step.lives, lives)


def test_same_seed_same_actions_same_frames():
    actions = np.random.default_rng(0).integers(0, 4, size=(60, 3))

    def play(games: Games, seed: int) -> np.ndarray:
        frames = [games.reset(seed=seed)[0]]
        frames += [games.step(a).frames for a in actions]
        return np.stack(frames)

    with _games(3, seed=7) as a, _games(3, seed=7) as b:
        first = play(a, 7)
        np.testing.assert_array_equal(first, play(b, 7))
        np.testing.assert_array_equal(first, play(a, 7))  # a reset restarts the same way


def test_cartpole_through_gymnasium():
    with _games(4, kind="gymnasium", gym_id="CartPole-v1") as games:
        assert games.num_actions == 2 and len(games.action_names) == 2
        assert games.observation_shape == (4,) and games.observation_dtype == np.float32
        frames, lives = games.reset(seed=1)
        assert frames.shape == (4, 4) and frames.dtype == np.float32
        assert lives.tolist() == [0, 0, 0, 0]
        for _ in range(200):  # always pushing left topples the pole in a few dozen steps
            step = games.step(np.zeros(4, np.int64))
            assert step.rewards.dtype == np.float32 and step.lives.dtype == np.int32
            if step.terminated.any():
                break
        assert step.terminated.any()
        # CartPole starts every state component within +-0.05: a fresh episode
        assert np.abs(step.frames[step.terminated]).max() <= 0.05


def test_bad_actions_are_refused():
    with _games(2) as games:
        games.reset()
        with pytest.raises(ValueError, match="shape"):
            games.step(np.zeros(3, np.int32))
        with pytest.raises(ValueError, match=r"\[0, 4\)"):
            games.step(np.array([0, 4]))


@pytest.mark.parametrize(
    ("spelling", "rom"),
    [
        ("breakout", "breakout"),
        ("ALE/Breakout-v5", "breakout"),
        ("BreakoutNoFrameskip-v4", "breakout"),
        ("SpaceInvaders", "space_invaders"),
        ("space-invaders", "space_invaders"),
        ("MsPacman", "ms_pacman"),
        ("TicTacToe3D", "tic_tac_toe_3d"),
    ],
)
def test_common_spellings_normalise_to_rom_ids(spelling, rom):
    assert normalise_game(spelling) == rom
    assert check_game(spelling) == rom


def test_unknown_game_is_one_line_with_suggestion():
    with pytest.raises(ConfigError) as err:
        _games(game="brekout")
    message = str(err.value)
    assert "\n" not in message
    count = len(atari_games())
    assert message == (
        f"env.game='brekout' is not an installed ALE game; did you mean 'breakout'? "
        f"({count} games: see python -m dqn_jax.envs)"
    )
    assert count > 50 and "breakout" in atari_games()


def test_unknown_gym_id_is_one_line():
    with pytest.raises(ConfigError, match=r"env.gym_id='CartPol-v1' .*'CartPole-v1'") as err:
        _games(kind="gymnasium", gym_id="CartPol-v1")
    assert "\n" not in str(err.value)


def test_module_prints_installed_games():
    out = subprocess.run([sys.executable, "-m", "dqn_jax.envs"], capture_output=True, text=True,
                         check=True).stdout
    assert "breakout" in out.split() and "space_invaders" in out.split()


@pytest.mark.parametrize("lives_are_terminals", [True, False])
def test_a_lost_life_is_a_terminal_unless_the_config_says_not(lives_are_terminals):
    """Real Breakout, random play, until a game loses a life with its episode going on."""
    from dqn_jax.runner.games import Acting, step_games

    env_cfg = EnvConfig(lives_are_terminals=lives_are_terminals)
    rng = np.random.default_rng(0)
    with make_games(env_cfg, 2, seed=0) as games:
        acting = Acting(*games.reset(seed=0), np.ones(2, bool), np.zeros(2), None)
        for _ in range(3000):
            before = acting.lives
            acting, outcome = step_games(games, acting, rng.integers(0, games.num_actions, 2), None)
            lost = (acting.lives < before) & ~outcome.ended
            if lost.any():
                break
        assert lost.any(), "no life was lost in 3000 random steps"
        np.testing.assert_array_equal(outcome.end_life, lost if lives_are_terminals else np.zeros(2, bool))

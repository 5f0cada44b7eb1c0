"""N games played at once, behind one small interface.

``make_games`` builds either an ale-py ``AtariVectorEnv`` (grayscale frames, raw
rewards, lives) or a Gymnasium vector env (vector observations), both with
same-step autoreset: when a game's episode ends, the frame returned for it is
already the first frame of its next episode, so the caller restarts that game's
motion trace from it. Rewards are returned raw; clipping belongs to the memory.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass
from functools import lru_cache

import gymnasium
import numpy as np

from dqn_jax.config import ConfigError, EnvConfig


@dataclass
class GameStep:
    """What one step of N games returns (index i is game i)."""

    frames: np.ndarray  # (N, H, W) uint8 for atari, (N, obs_dim) float32 for gymnasium
    rewards: np.ndarray  # (N,) float32, raw (unclipped)
    terminated: np.ndarray  # (N,) bool: the game ended
    truncated: np.ndarray  # (N,) bool: the episode hit its frame limit
    lives: np.ndarray  # (N,) int32, of the episode the frame belongs to

    @property
    def ended(self) -> np.ndarray:
        """(N,) bool: the episode ended, either way; the frame starts a new one."""
        return self.terminated | self.truncated


class Games:
    """N copies of one game stepped together; see :func:`make_games`."""

    def __init__(self, env: gymnasium.vector.VectorEnv, *, kind: str, action_names: list[str],
                 seed: int, lives_are_terminals: bool = True):
        self.env = env
        self.kind = kind
        # a lost life ends the value of what came before it, as the tutorial and the Nature
        # DQN's training have it (Dopamine does not: env.lives_are_terminals=false)
        self.lives_are_terminals = lives_are_terminals
        self.seed = seed  # the default for reset()
        self.num_envs = int(env.num_envs)
        self.action_names = list(action_names)
        self.num_actions = len(self.action_names)
        single = env.single_observation_space.shape
        if kind == "atari":  # drop the stack axis of (stack=1, H, W)
            self.observation_shape: tuple[int, ...] = tuple(single[1:])
            self.observation_dtype = np.dtype(np.uint8)
        else:
            self.observation_shape = tuple(single)
            self.observation_dtype = np.dtype(np.float32)

    def _frames(self, obs) -> np.ndarray:
        if self.kind == "atari":
            return obs[:, 0]
        return np.asarray(obs, dtype=np.float32)

    def _lives(self, info: dict) -> np.ndarray:
        if "lives" in info:
            return np.asarray(info["lives"], dtype=np.int32)
        return np.zeros(self.num_envs, dtype=np.int32)

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Start every game afresh; game i is seeded with ``seed + i``. Returns (frames, lives)."""
        obs, info = self.env.reset(seed=int(self.seed if seed is None else seed))
        return self._frames(obs), self._lives(info)

    def step(self, actions) -> GameStep:
        """Play one action in each game (numpy or JAX ints, shape (N,))."""
        actions = np.asarray(actions).astype(np.int32, copy=False)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        if actions.min() < 0 or actions.max() >= self.num_actions:
            raise ValueError(f"actions must be in [0, {self.num_actions}), got {actions}")
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        return GameStep(
            frames=self._frames(obs),
            rewards=np.asarray(rewards, dtype=np.float32),
            terminated=np.asarray(terminated, dtype=bool),
            truncated=np.asarray(truncated, dtype=bool),
            lives=self._lives(info),
        )

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> Games:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------- game names

@lru_cache(maxsize=1)
def atari_games() -> list[str]:
    """The ROM ids ale-py has installed, sorted (breakout, pong, space_invaders, ...)."""
    from ale_py import roms

    return sorted(roms.get_all_rom_ids())


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def normalise_game(name: str) -> str:
    """Map the common spellings of a game to its ROM id where one matches.

    "ALE/Breakout-v5", "BreakoutNoFrameskip-v4", "SpaceInvaders", "space-invaders"
    all become ROM ids; a name that matches no ROM comes back lower-cased, stripped.
    """
    text = name.strip()
    text = re.sub(r"^ALE/", "", text, flags=re.IGNORECASE)
    text = re.sub(r"-v\d+$", "", text)
    text = re.sub(r"(NoFrameskip|Deterministic)$", "", text)
    by_squashed = {_squash(rom): rom for rom in atari_games()}
    return by_squashed.get(_squash(text), text.lower())


def _did_you_mean(value: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(value, choices, n=3, cutoff=0.6)
    if not close:
        return ""
    quoted = [repr(c) for c in close]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f"; did you mean {listed}?"


def check_game(name: str) -> str:
    """The ROM id for ``name``, or ConfigError naming the closest installed games."""
    rom = normalise_game(name)
    games = atari_games()
    if rom in games:
        return rom
    raise ConfigError(
        f"env.game={name!r} is not an installed ALE game{_did_you_mean(rom, games)} "
        f"({len(games)} games: see python -m dqn_jax.envs)"
    )


def _check_gym_id(gym_id: str) -> None:
    if ":" in gym_id or gym_id in gymnasium.registry:  # "module:Env-v0" imports on make
        return
    ids = sorted(gymnasium.registry)
    raise ConfigError(
        f"env.gym_id={gym_id!r} is not a registered Gymnasium environment"
        f"{_did_you_mean(gym_id, ids)} ({len(ids)} ids: see python -m dqn_jax.envs --gym)"
    )


# ---------------------------------------------------------------------------- building

def make_games(env_cfg: EnvConfig, num_envs: int, seed: int) -> Games:
    """Build ``num_envs`` games from the env config; ``seed`` is the default reset seed."""
    if env_cfg.kind == "atari":
        return _make_atari(env_cfg, num_envs, seed)
    if env_cfg.kind == "gymnasium":
        return _make_gymnasium(env_cfg, num_envs, seed)
    raise ConfigError(f"env.kind={env_cfg.kind!r} is not allowed; choose one of atari, gymnasium")


def _make_atari(env_cfg: EnvConfig, num_envs: int, seed: int) -> Games:
    from ale_py.vector_env import AtariVectorEnv

    env = AtariVectorEnv(
        game=check_game(env_cfg.game),
        num_envs=num_envs,
        stack_num=1,  # the motion tracer, not a frame stack, carries the history
        img_height=env_cfg.height,
        img_width=env_cfg.width,
        grayscale=True,
        frameskip=env_cfg.frameskip,
        repeat_action_probability=env_cfg.repeat_action_probability,
        noop_max=0,
        use_fire_reset=env_cfg.fire_reset,
        episodic_life=False,  # lives are reported; the memory marks a life's end itself
        reward_clipping=False,
        autoreset_mode="SameStep",
        max_num_frames_per_episode=env_cfg.max_episode_frames,
        full_action_space=env_cfg.full_action_space,
        num_threads=min(num_envs, os.cpu_count() or 1),
    )
    names = [action.name for action in env.ale.get_action_set()]
    return Games(env, kind="atari", action_names=names, seed=seed, lives_are_terminals=env_cfg.lives_are_terminals)


def _make_gymnasium(env_cfg: EnvConfig, num_envs: int, seed: int) -> Games:
    _check_gym_id(env_cfg.gym_id)
    env = gymnasium.make_vec(
        env_cfg.gym_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP},
    )
    space = env.single_action_space
    if not isinstance(space, gymnasium.spaces.Discrete):
        env.close()
        raise ConfigError(
            f"env.gym_id={env_cfg.gym_id!r} has a {type(space).__name__} action space; "
            "Q-learning needs a Discrete one"
        )
    names = [f"action {i}" for i in range(int(space.n))]
    return Games(env, kind="gymnasium", action_names=names, seed=seed)


def _main(argv: list[str]) -> None:
    if "--gym" in argv:
        print("\n".join(sorted(gymnasium.registry)))
    else:
        games = atari_games()
        print(f"{len(games)} ALE games installed (env.game=...):")
        print("\n".join(games))


if __name__ == "__main__":
    _main(sys.argv[1:])

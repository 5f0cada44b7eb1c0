"""Playing N games: what acting carries from step to step, and one step of the games.

Training and testing both step the games with :func:`step_games`; a lost life is a
terminal for learning here, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dqn_jax.core.acting import Player


@dataclass
class Acting:
    """What playing N games carries from one step to the next."""

    frames: np.ndarray  # (N, ...) the frames the next actions are chosen on
    lives: np.ndarray  # (N,) lives left in each game's episode
    restart: np.ndarray  # (N,) bool: the frame starts a new episode (the tracer restarts)
    scores: np.ndarray  # (N,) each game's score in the episode so far
    tracer: object  # the motion tracer's state (None without one)

    @classmethod
    def start(cls, games, player: Player, seed: int) -> Acting:
        frames, lives = games.reset(seed=seed)
        return cls(frames, lives, np.ones(games.num_envs, bool), np.zeros(games.num_envs),
                   player.start(frames))


@dataclass
class Outcome:
    """What one step brought each of the N games."""

    rewards: np.ndarray  # raw (unclipped) rewards
    end_life: np.ndarray  # a life was lost and the episode goes on: a terminal for the sweep
    ended: np.ndarray  # the episode ended (the next frame starts another)
    lives: np.ndarray  # lives left in the episode the step belongs to (0 once it ended)
    scores: np.ndarray  # each game's episode score after this step

    def memory_row(self) -> tuple:
        """What the replay memory records of the step: (rewards, end of life, end of episode)."""
        return self.rewards, self.end_life, self.ended


def step_games(games, acting: Acting, actions, tracer) -> tuple[Acting, Outcome]:
    """Step the N games with ``actions``; ``tracer`` is the tracer after choosing them.

    The games reset an ended episode in the same step, so the returned frame of such a
    game is the first of its next episode (``restart``).
    """
    step = games.step(np.asarray(actions))
    ended = step.ended
    scores = acting.scores + step.rewards
    lost = (step.lives < acting.lives) & ~ended if games.lives_are_terminals else np.zeros_like(ended)
    outcome = Outcome(step.rewards, lost, ended,
                      np.where(ended, 0, step.lives), scores)
    return Acting(step.frames, step.lives, ended, np.where(ended, 0.0, scores), tracer), outcome



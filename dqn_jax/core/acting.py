"""The acting step, jitted once: frames in; encoded states, Q-values and epsilon-greedy
actions out, with the PRNG key threaded through it, and (training) the step written
into the replay memory in the same call. Every algorithm acts with it.
"""

from __future__ import annotations

import jax
import numpy as np

from dqn_jax.core import replay
from dqn_jax.core.encodings import make_encoding
from dqn_jax.core.policy import epsilon_greedy


def state_spec(env_cfg, observation_shape, observation_dtype) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of one stored state (frames with the encoding's channels for Atari)."""
    channels = make_encoding(env_cfg).channels
    if not channels:
        return tuple(observation_shape), np.dtype(observation_dtype)
    return (*observation_shape, channels), np.dtype(np.uint8)


class Player:
    """Acting for N games at once, compiled once; epsilon comes from ``epsilon_fn(count)``.

    ``act`` chooses actions (testing). ``play`` is the training step: it closes the
    previous step's memory row with that step's outcome, chooses the actions and writes
    the decision into the next row, all in one jitted call on the donated memory.
    """

    def __init__(self, network, env_cfg, epsilon_fn, reward_clip: float = 1.0):
        self.encoding = encoding = make_encoding(env_cfg)

        def act(params, tracer, frames, restart, key, count):
            tracer, states = encoding.encode(tracer, frames, restart)
            q_values = network.apply(params, states)
            key, pick = jax.random.split(key)
            epsilon = epsilon_fn(count)
            actions = epsilon_greedy(pick, q_values, epsilon)
            return key, tracer, states, q_values, actions, epsilon

        def play(params, memory, tracer, frames, restart, key, count, outcome, pending):
            memory = replay.record_outcome(memory, *outcome, reward_clip, pending)
            key, tracer, states, q_values, actions, epsilon = act(params, tracer, frames, restart, key, count)
            memory = replay.record_decision(memory, states, q_values, actions)
            return memory, key, tracer, actions, epsilon

        self._act = jax.jit(act, donate_argnums=(1,))
        self._play = jax.jit(play, donate_argnums=(1, 2))

    def act(self, params, tracer, frames, restart, key, count):
        """Choose actions (testing): returns (key, tracer, states, q_values, actions, epsilon)."""
        return self._act(params, tracer, frames, restart, key, _as_count(count))

    def play(self, params, memory, tracer, frames, restart, key, count, outcome=None):
        """One training step: returns (memory, key, tracer, actions, epsilon).

        ``outcome`` is the previous step's (rewards, end_life, end_episode), or None
        when no memory row is open (the first step after the memory was emptied).
        """
        pending = outcome is not None
        if not pending:
            games = np.shape(frames)[0]
            outcome = (np.zeros(games, np.float32), np.zeros(games, bool), np.zeros(games, bool))
        return self._play(params, memory, tracer, frames, restart, key, _as_count(count), outcome, pending)

    def start(self, frames):
        """The encoding's carried state for the first frames (None when it carries none)."""
        return self.encoding.start(frames)


def _as_count(states: int) -> np.float32:
    """A state count for the signals inside jitted code: a float, since JAX's int32 would
    overflow past 2**31 states (exact to 2**24, then to within 1 part in 2**24)."""
    return np.float32(states)

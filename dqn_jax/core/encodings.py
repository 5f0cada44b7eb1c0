"""State encodings: what the network sees of a game, built from its frames one step at a time.

``env.encoding`` chooses one, for any algorithm:

* ``motion_trace``: the tutorial's, the latest frame and a decaying trace of motion
  (two channels, :mod:`dqn_jax.core.motion`);
* ``frame_stack``: the last ``env.stack_size`` frames, oldest first (the Nature DQN's);
* ``frame``: the latest frame alone (one channel); vector observations (CartPole) are
  always used as they are.

An :class:`Encoding` is a pair of pure functions over N games: ``start(frames)`` gives
the carried state for the first frames, ``encode(carried, frames, restart)`` the next
carried state and the (N, H, W, C) uint8 states. Where ``restart`` is true a game's
frame begins a new episode: the history of the previous one is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp

from dqn_jax.core.motion import init_tracer, trace

ENCODINGS = ("motion_trace", "frame_stack", "frame")


class Encoding(NamedTuple):
    channels: int  # channels of one state (0: vector observations, used as they are)
    start: Callable  # frames (N, ...) -> the carried state (None when nothing is carried)
    encode: Callable  # (carried, frames, restart) -> (carried, states); jit-traceable


def make_encoding(env_cfg) -> Encoding:
    """The encoding ``env_cfg.encoding`` names, for ``env_cfg.kind``'s observations."""
    if env_cfg.kind != "atari":
        return Encoding(0, lambda frames: None, lambda carried, frames, restart: (None, frames))
    if env_cfg.encoding == "motion_trace":
        threshold, decay = float(env_cfg.trace_threshold), float(env_cfg.trace_decay)
        return Encoding(2, _start_tracer,
                        lambda tracer, frames, restart: trace(tracer, frames, restart, threshold, decay))
    if env_cfg.encoding == "frame_stack":
        size = int(env_cfg.stack_size)
        return Encoding(size, lambda frames: _full_stack(jnp.asarray(frames), size),
                        lambda stack, frames, restart: _push(stack, frames, restart))
    if env_cfg.encoding == "frame":
        return Encoding(1, lambda frames: None, lambda carried, frames, restart: (None, frames[..., None]))
    raise ValueError(f"env.encoding={env_cfg.encoding!r}; choose one of {', '.join(ENCODINGS)}")


def _start_tracer(frames):
    """The tracer keeps the last frame as uint8, as the games give it: exactly the states
    of a float32 tracer, for a quarter of the bytes read and written per step."""
    frames = jnp.asarray(frames)
    return init_tracer(frames, jnp.uint8 if frames.dtype == jnp.uint8 else jnp.float32)


def _full_stack(frames, size: int):
    """(N, H, W, size): every slot holds ``frames``, as after a reset."""
    return jnp.repeat(frames[..., None], size, axis=-1)


def _push(stack, frames, restart):
    """The stack with ``frames`` as its newest slot; a restarting game's stack is all ``frames``."""
    frames = jnp.asarray(frames, stack.dtype)
    pushed = jnp.concatenate([stack[..., 1:], frames[..., None]], axis=-1)
    restart = jnp.asarray(restart, bool).reshape((-1,) + (1,) * (stack.ndim - 1))
    stack = jnp.where(restart, _full_stack(frames, stack.shape[-1]), pushed)
    return stack, stack

"""The motion tracer: each game's state is its latest frame plus a decaying trace of motion.

A single grayscale frame does not show which way the ball moves. The tracer keeps,
per game, the previous frame and a trace image: pixels that changed by more than a
threshold light up at 255 and then fade by ``decay`` every step, so the trace shows
recent motion as a comet tail. Everything here is a pure function over a batch of N
games, so the agent can trace all games in one jitted call.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class TracerState(NamedTuple):
    """What the tracer remembers between steps, one image per game."""

    last_input: jax.Array  # float32 (N, H, W): the previous frame
    last_output: jax.Array  # float32 (N, H, W): the previous motion trace


def init_tracer(frames) -> TracerState:
    """Start a tracer from the first frames (N, H, W): no motion seen yet."""
    frames = jnp.asarray(frames, dtype=jnp.float32)
    return TracerState(last_input=frames, last_output=jnp.zeros_like(frames))


@jax.jit
def trace(
    tracer: TracerState,
    frames: jax.Array,
    restart: jax.Array,
    threshold: float = 20.0,
    decay: float = 0.75,
) -> tuple[TracerState, jax.Array]:
    """Advance the tracer by one frame per game and return the states.

    ``frames`` is uint8 (N, H, W); ``restart`` is bool (N,), true where a game has
    just started a new episode: there the frame initialises the tracer again and the
    trace is blank. Returns the new tracer and the states, uint8 (N, H, W, 2) with
    channel 0 the frame and channel 1 the motion trace.
    """
    frame = jnp.asarray(frames).astype(jnp.float32)
    diff = frame - tracer.last_input
    motion = jnp.where(jnp.abs(diff) > threshold, 255.0, 0.0)
    output = jnp.clip(motion + decay * tracer.last_output, 0.0, 255.0)
    # Broadcast the per-game flag over the image axes.
    restart = jnp.asarray(restart, dtype=bool).reshape((-1,) + (1,) * (frame.ndim - 1))
    output = jnp.where(restart, 0.0, output)
    new = TracerState(last_input=frame, last_output=output)
    # The trace is in [0, 255] and the frame is integral, so the cast truncates only
    # the trace's fractional part, as the tutorial's uint8 conversion does.
    states = jnp.stack([new.last_input, new.last_output], axis=-1).astype(jnp.uint8)
    return new, states

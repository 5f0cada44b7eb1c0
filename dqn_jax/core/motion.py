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

    last_input: jax.Array  # float32 (or uint8) (N, H, W): the previous frame
    last_output: jax.Array  # float32 (N, H, W): the previous motion trace


def init_tracer(frames, input_dtype=jnp.float32) -> TracerState:
    """Start a tracer from the first frames (N, H, W): no motion seen yet.

    ``input_dtype`` is how the last frame is kept: float32 by default, or uint8 for
    uint8 frames (exactly the same states, fewer bytes per step).
    """
    frames = jnp.asarray(frames)
    return TracerState(last_input=frames.astype(input_dtype),
                       last_output=jnp.zeros(frames.shape, jnp.float32))


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
    frames = jnp.asarray(frames)
    frame = frames.astype(jnp.float32)
    # Frames are integral, so the difference is exact whatever dtype keeps the last one.
    diff = frame - tracer.last_input.astype(jnp.float32)
    motion = jnp.where(jnp.abs(diff) > threshold, 255.0, 0.0)
    output = jnp.clip(motion + decay * tracer.last_output, 0.0, 255.0)
    # Broadcast the per-game flag over the image axes.
    restart = jnp.asarray(restart, dtype=bool).reshape((-1,) + (1,) * (frame.ndim - 1))
    output = jnp.where(restart, 0.0, output)
    # The last input keeps the tracer's dtype: float32 from init_tracer, or uint8 (a
    # quarter of the bytes to read and write each step) from init_tracer(..., uint8).
    new = TracerState(last_input=frame.astype(tracer.last_input.dtype), last_output=output)
    # The trace is in [0, 255] and the frame is integral, so the cast truncates only
    # the trace's fractional part, as the tutorial's uint8 conversion does.
    return new, interleave(frames.astype(jnp.uint8), output.astype(jnp.uint8))


def interleave(first: jax.Array, second: jax.Array) -> jax.Array:
    """uint8 (..., 2) from two uint8 (...) images: ``stack([first, second], -1)``.

    XLA on CPU writes a stack along a new last axis of length 2 element by element;
    packing the pair into one uint16 (first in the low byte) and bitcasting it to two
    bytes gives the same array several times faster. XLA defines the bitcast to a
    narrower type in little-endian order on every backend, and tests check it.
    """
    pair = first.astype(jnp.uint16) | (second.astype(jnp.uint16) << 8)
    return jax.lax.bitcast_convert_type(pair, jnp.uint8)

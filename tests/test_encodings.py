"""State encodings against plain per-game references; the motion trace is the tracer's."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dqn_jax.config import EnvConfig
from dqn_jax.core.encodings import make_encoding
from tests.test_motion import reference_trace


def reference_stack(frames, restarts, size):
    """Per game, the last ``size`` frames oldest first; an episode's first frame fills them all."""
    steps, games = frames.shape[:2]
    out = np.zeros(frames.shape + (size,), np.uint8)
    history = [[frames[0, g]] * size for g in range(games)]
    for s in range(steps):
        for g in range(games):
            history[g] = [frames[s, g]] * size if restarts[s, g] else history[g][1:] + [frames[s, g]]
            out[s, g] = np.stack(history[g], axis=-1)
    return out


def episodes(seed=0, steps=12, games=3):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (steps, games, 5, 4), dtype=np.uint8)
    restarts = rng.random((steps, games)) < 0.2
    restarts[0] = True
    return frames, restarts


def run(encoding, frames, restarts):
    encode = jax.jit(encoding.encode)
    carried, states = encoding.start(frames[0]), []
    for frame, restart in zip(frames, restarts, strict=True):
        carried, state = encode(carried, frame, restart)
        states.append(np.asarray(state))
    return np.stack(states)


@pytest.mark.parametrize("size", [1, 4])
def test_frame_stack_matches_the_reference(size):
    frames, restarts = episodes()
    encoding = make_encoding(EnvConfig(encoding="frame_stack", stack_size=size))
    assert encoding.channels == size
    got = run(encoding, frames, restarts)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, reference_stack(frames, restarts, size))


def test_motion_trace_is_the_tutorials_tracer():
    frames, restarts = episodes(1)
    encoding = make_encoding(EnvConfig(encoding="motion_trace"))
    assert encoding.channels == 2
    np.testing.assert_array_equal(run(encoding, frames, restarts), reference_trace(frames, restarts))


def test_frame_alone_and_vector_observations():
    frames, restarts = episodes(2)
    np.testing.assert_array_equal(run(make_encoding(EnvConfig(encoding="frame")), frames, restarts),
                                  frames[..., None])
    vectors = np.random.default_rng(0).normal(size=(4, 2, 4)).astype(np.float32)
    gym = make_encoding(EnvConfig(kind="gymnasium", encoding="frame_stack"))
    assert gym.channels == 0
    np.testing.assert_array_equal(run(gym, vectors, np.zeros((4, 2), bool)), vectors)

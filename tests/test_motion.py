import jax.numpy as jnp
import numpy as np

from dqn_jax.core.motion import TracerState, init_tracer, trace


def reference_trace(frames, restarts, threshold=20.0, decay=0.75):
    """Plain per-game loop: frames (S, N, H, W) uint8, restarts (S, N) bool; states (S, N, H, W, 2)."""
    steps, games = frames.shape[:2]
    out = np.zeros(frames.shape + (2,), np.uint8)
    last_in = frames[0].astype(np.float32).copy()
    last_out = np.zeros_like(last_in)
    for s in range(steps):
        for g in range(games):
            frame = frames[s, g].astype(np.float32)
            if restarts[s, g]:
                last_in[g], last_out[g] = frame, 0.0
            else:
                motion = np.where(np.abs(frame - last_in[g]) > threshold, 255.0, 0.0)
                last_out[g] = np.clip(motion + decay * last_out[g], 0.0, 255.0)
                last_in[g] = frame
            out[s, g, ..., 0] = last_in[g].astype(np.uint8)
            out[s, g, ..., 1] = last_out[g].astype(np.uint8)
    return out


def test_hand_example():
    tracer = init_tracer(np.array([[[0, 100, 50]]], np.uint8))
    assert tracer.last_input.dtype == jnp.float32
    assert float(jnp.abs(tracer.last_output).sum()) == 0.0
    # Pixel 0 jumps by 30 (> 20), pixel 1 by 20 (not > 20), pixel 2 drops by 50.
    tracer, states = trace(tracer, np.array([[[30, 120, 0]]], np.uint8), np.array([False]))
    assert states.dtype == jnp.uint8 and states.shape == (1, 1, 3, 2)
    np.testing.assert_array_equal(states[0, 0, :, 0], [30, 120, 0])
    np.testing.assert_array_equal(states[0, 0, :, 1], [255, 0, 255])
    # No change: the trace decays by 0.75 (255 * 0.75 = 191.25 -> 191).
    tracer, states = trace(tracer, np.array([[[30, 120, 0]]], np.uint8), np.array([False]))
    np.testing.assert_array_equal(states[0, 0, :, 1], [191, 0, 191])
    np.testing.assert_allclose(tracer.last_output[0, 0], [191.25, 0, 191.25])
    # A restart blanks the trace and takes the frame as the new reference.
    tracer, states = trace(tracer, np.array([[[200, 0, 0]]], np.uint8), np.array([True]))
    np.testing.assert_array_equal(states[0, 0, :, 1], [0, 0, 0])
    np.testing.assert_array_equal(states[0, 0, :, 0], [200, 0, 0])


def test_matches_reference_with_restarts():
    rng = np.random.default_rng(0)
    steps, games, h, w = 12, 3, 5, 4
    frames = rng.integers(0, 256, (steps, games, h, w), dtype=np.uint8)
    # Some pixels hold still so the decay path is exercised too.
    frames[4:8, :, :2] = frames[4, :, :2]
    restarts = rng.random((steps, games)) < 0.2
    expected = reference_trace(frames, restarts, threshold=25.0, decay=0.6)

    tracer = init_tracer(frames[0])
    got = []
    for s in range(steps):
        tracer, states = trace(tracer, frames[s], restarts[s], 25.0, 0.6)
        got.append(np.asarray(states))
    np.testing.assert_array_equal(np.stack(got), expected)
    assert isinstance(tracer, TracerState)

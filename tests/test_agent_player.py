"""The Player's act step is exactly the straightforward composition of its parts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqn_jax.algorithms.hvass.targets import resolve_target_method
from dqn_jax.config import EnvConfig, NetworkConfig
from dqn_jax.core import replay
from dqn_jax.core.acting import Player, state_spec
from dqn_jax.core.motion import TracerState
from dqn_jax.core.networks import make_network
from dqn_jax.core.policy import epsilon_greedy
from dqn_jax.core.schedules import linear_signal
from tests.programs import add, add_jit


def reference_step(network, params, tracer, frames, restart, key, count, epsilon_fn, threshold, decay):
    """float32 tracer, stack along the last axis, network, epsilon-greedy: the plain version."""
    frame = jnp.asarray(frames).astype(jnp.float32)
    motion = jnp.where(jnp.abs(frame - tracer.last_input) > threshold, 255.0, 0.0)
    output = jnp.clip(motion + decay * tracer.last_output, 0.0, 255.0)
    output = jnp.where(jnp.asarray(restart)[:, None, None], 0.0, output)
    states = jnp.stack([frame, output], axis=-1).astype(jnp.uint8)
    q = network.apply(params, states)
    key, pick = jax.random.split(key)
    epsilon = epsilon_fn(count)
    return key, TracerState(frame, output), states, q, epsilon_greedy(pick, q, epsilon), epsilon


def _setup(num_games=3, num_actions=4, steps=9):
    env = EnvConfig(height=12, width=10, trace_threshold=20.0, trace_decay=0.75)
    network = make_network(NetworkConfig(name="mlp", dense=[8], init_stddev=0.0), num_actions)
    shape, dtype = state_spec(env, (12, 10), np.uint8)
    params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape), dtype))
    epsilon_fn = linear_signal(1.0, 0.1, 40.0)
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (steps + 1, num_games, 12, 10), dtype=np.uint8)
    frames[3:6, :, :4] = frames[3, :, :4]  # still pixels: the decay path
    restarts = rng.random((steps + 1, num_games)) < 0.25
    restarts[0] = True
    rewards = rng.choice([-2.0, 0.0, 1.0], (steps, num_games)).astype(np.float32)
    ends = rng.random((steps, num_games)) < 0.2
    return env, network, shape, dtype, params, epsilon_fn, frames, restarts, rewards, ends


def test_act_matches_reference_composition_and_memory_rows():
    env, network, shape, dtype, params, epsilon_fn, frames, restarts, rewards, ends = _setup()
    steps, num_games = rewards.shape
    player = Player(network, env, epsilon_fn)
    tracer = player.start(frames[0])
    ref_tracer = TracerState(jnp.asarray(frames[0], jnp.float32), jnp.zeros(frames[0].shape, jnp.float32))
    key = ref_key = jax.random.PRNGKey(3)
    memory = replay.init_memory(steps, num_games, shape, dtype, 4)
    ref_memory = replay.init_memory(steps, num_games, shape, dtype, 4)
    for t in range(steps):
        count = t * num_games
        key, tracer, states, q, actions, eps = player.act(params, tracer, frames[t], restarts[t], key, count)
        ref_key, ref_tracer, ref_states, ref_q, ref_actions, ref_eps = reference_step(
            network, params, ref_tracer, frames[t], restarts[t], ref_key, count, epsilon_fn, 20.0, 0.75)
        np.testing.assert_array_equal(np.asarray(states), np.asarray(ref_states))
        np.testing.assert_array_equal(np.asarray(q), np.asarray(ref_q))
        np.testing.assert_array_equal(np.asarray(actions), np.asarray(ref_actions))
        np.testing.assert_array_equal(np.asarray(key), np.asarray(ref_key))
        np.testing.assert_allclose(float(eps), float(ref_eps), rtol=1e-6)  # jit vs eager rounding
        np.testing.assert_array_equal(np.asarray(tracer.last_output), np.asarray(ref_tracer.last_output))
        np.testing.assert_array_equal(np.asarray(tracer.last_input, np.float32), np.asarray(ref_tracer.last_input))
        memory = add_jit(memory, states, q, actions, rewards[t], ends[t], ends[t], 1.0)
        ref_memory = add(ref_memory, ref_states, ref_q, ref_actions, rewards[t], ends[t], ends[t], 1.0)
    for got, want in zip(jax.tree_util.tree_leaves(memory), jax.tree_util.tree_leaves(ref_memory), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_play_writes_the_rows_that_act_then_add_write():
    """The fused training step (outcome of step t-1, decision of step t, one call) fills
    the memory exactly as act + add per step, and leaves the last row open until its
    outcome is recorded."""
    env, network, shape, dtype, params, epsilon_fn, frames, restarts, rewards, ends = _setup()
    steps, num_games = rewards.shape
    player = Player(network, env, epsilon_fn, reward_clip=1.0)
    tracer, ref_tracer = player.start(frames[0]), player.start(frames[0])
    key = ref_key = jax.random.PRNGKey(5)
    memory = replay.init_memory(steps, num_games, shape, dtype, 4)
    ref_memory = replay.init_memory(steps, num_games, shape, dtype, 4)
    outcome = None
    for t in range(steps):
        count = t * num_games
        memory, key, tracer, actions, _ = player.play(params, memory, tracer, frames[t], restarts[t], key,
                                                      count, outcome)
        assert int(memory.count) == t  # the row just decided stays open
        ref_key, ref_tracer, states, q, ref_actions, _ = player.act(params, ref_tracer, frames[t], restarts[t],
                                                                   ref_key, count)
        np.testing.assert_array_equal(np.asarray(actions), np.asarray(ref_actions))
        ref_memory = add_jit(ref_memory, states, q, ref_actions, rewards[t], ends[t] & (t % 2 == 0),
                                    ends[t], 1.0)
        outcome = (rewards[t], ends[t] & (t % 2 == 0), ends[t])
    memory = replay.record_outcome_jit(memory, *outcome, 1.0)
    assert int(memory.count) == steps
    for got, want in zip(jax.tree_util.tree_leaves(memory), jax.tree_util.tree_leaves(ref_memory), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_target_method_auto_resolves_by_backend():
    expected = "scan" if jax.default_backend() == "cpu" else "associative"
    assert resolve_target_method("auto") == expected
    assert resolve_target_method("scan") == "scan" and resolve_target_method("associative") == "associative"


def test_the_state_count_goes_past_2_to_the_31_without_overflow():
    """The tutorial's runs count 10^8 states and longer runs pass int32's 2**31."""
    from dqn_jax.core.schedules import linear_signal

    network = make_network(NetworkConfig(name="mlp", dense=[4]), 2)
    params = network.init(jax.random.PRNGKey(0), np.zeros((1, 4), np.float32))
    player = Player(network, EnvConfig(kind="gymnasium", encoding="frame"), linear_signal(1.0, 0.1, 1e9))
    frames, restart = np.zeros((2, 4), np.float32), np.ones(2, bool)
    for count, expected in ((0, 1.0), (500_000_000, 0.55), (3_000_000_000, 0.1), (5_000_000_000, 0.1)):
        *_, epsilon = player.act(params, None, frames, restart, jax.random.PRNGKey(1), count)
        assert float(epsilon) == pytest.approx(expected, rel=1e-6), count

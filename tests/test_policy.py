import jax
import jax.numpy as jnp
import numpy as np

from dqn_jax.core.policy import epsilon_greedy


def test_epsilon_zero_is_greedy():
    q = jax.random.normal(jax.random.key(0), (64, 6))
    actions = epsilon_greedy(jax.random.key(1), q, 0.0)
    assert actions.dtype == jnp.int32 and actions.shape == (64,)
    np.testing.assert_array_equal(actions, np.argmax(np.asarray(q), axis=1))


def test_epsilon_one_is_uniform():
    q = jnp.tile(jnp.array([[0.0, 0.0, 9.0, 0.0]]), (20_000, 1))
    actions = np.asarray(epsilon_greedy(jax.random.key(2), q, 1.0))
    freq = np.bincount(actions, minlength=4) / actions.size
    np.testing.assert_allclose(freq, 0.25, atol=0.02)


def test_partial_epsilon_and_traced_epsilon():
    q = jnp.tile(jnp.array([[0.0, 1.0, 0.0]]), (20_000, 1))
    epsilon = jnp.float32(0.3)
    actions = np.asarray(jax.jit(epsilon_greedy)(jax.random.key(3), q, epsilon))
    # Greedy share: 0.7 plus a third of the random 0.3.
    assert abs(np.mean(actions == 1) - (0.7 + 0.1)) < 0.02


def test_same_key_same_actions():
    q = jax.random.normal(jax.random.key(0), (32, 5))
    a1 = epsilon_greedy(jax.random.key(7), q, 0.5)
    a2 = epsilon_greedy(jax.random.key(7), q, 0.5)
    a3 = epsilon_greedy(jax.random.key(8), q, 0.5)
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, a3)

"""Epsilon-greedy action choice for N games at once, driven by explicit JAX keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.jit
def epsilon_greedy(key: jax.Array, q_values: jax.Array, epsilon) -> jax.Array:
    """Pick one action per game: uniformly at random with probability ``epsilon``, else greedy.

    ``q_values`` is (N, A); ``epsilon`` a scalar (a traced value is fine, so a schedule
    can change it without recompiling). Returns int32 actions (N,). The same key gives
    the same actions.
    """
    num_games, num_actions = q_values.shape
    explore_key, action_key = jax.random.split(key)
    explore = jax.random.uniform(explore_key, (num_games,)) < epsilon
    random_actions = jax.random.randint(action_key, (num_games,), 0, num_actions, dtype=jnp.int32)
    greedy_actions = jnp.argmax(q_values, axis=-1).astype(jnp.int32)
    return jnp.where(explore, random_actions, greedy_actions)

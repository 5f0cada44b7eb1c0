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

    Both choices come from one draw of 2N uniforms: each threefry hash is a loop of
    small kernels on a CPU, and this runs once per step, so one hash instead of the
    four that ``uniform`` + ``randint`` cost is a large part of the acting step there.
    ``floor(u * A)`` is uniform over the A actions to within A / 2**24.
    """
    num_games, num_actions = q_values.shape
    explore_u, action_u = jax.random.uniform(key, (2, num_games))
    random_actions = jnp.minimum((action_u * num_actions).astype(jnp.int32), num_actions - 1)
    greedy_actions = jnp.argmax(q_values, axis=-1).astype(jnp.int32)
    return jnp.where(explore_u < epsilon, random_actions, greedy_actions)

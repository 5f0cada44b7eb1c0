"""Prioritised sampling on the replay memory's stored errors (Schaul et al. 2016, proportional).

A stored error e is |target - Q(s, a)| of a transition, written by the algorithm that
measured it (DQN: each gradient step, for the batch it drew; the sweep inside DQN: each
refresh, for its window). Its priority is (e + ``FLOOR``)^α, and a batch draws each
entry with probability P = priority / sum of priorities: stratified, one draw from each
of ``batch_size`` equal slices of the priorities' running sum, as Schaul et al. and
Dopamine draw from their sum trees. A running sum over the memory costs one pass of
its entries per batch (a sum tree would cost log n per update), which is small beside
the gradient step at the sizes here. An entry closed since its error was last measured
holds ``UNSEEN`` (:func:`dqn_jax.core.replay.record_outcome` writes it in a circular
memory) and gets the largest priority of the memory, so that every new transition is
drawn at least once soon. The importance weights (P / min P over the batch)^-β undo
the bias of the draw in the loss (β = 1: wholly), normalised so the largest is 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

UNSEEN = -1.0  # a stored error not measured yet: the entry gets the memory's largest priority
FLOOR = 1e-6  # added to every error, so that a transition learnt exactly is still drawn


def priorities(errors: jax.Array, valid: jax.Array, exponent: float) -> jax.Array:
    """(e + FLOOR)^α for the ``valid`` entries (0 elsewhere); an ``UNSEEN`` entry gets the
    largest priority of the valid measured ones (1 when there are none)."""
    measured = valid & (errors >= 0)
    priority = jnp.where(measured, jnp.maximum(errors, 0.0) + FLOOR, 1.0) ** exponent
    largest = jnp.max(jnp.where(measured, priority, 0.0), initial=0.0)
    largest = jnp.where(jnp.any(measured), largest, 1.0)
    return jnp.where(measured, priority, jnp.where(valid, largest, 0.0))


def draw(key, priority: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Indices into flattened ``priority`` and their probabilities P: one draw from each of
    ``batch_size`` equal slices of the running sum. Needs a positive sum."""
    flat = priority.reshape(-1)
    running = jnp.cumsum(flat)
    total = running[-1]
    slices = (jnp.arange(batch_size) + jax.random.uniform(key, (batch_size,))) / batch_size
    # below the total, so the first index whose running sum exceeds it has a priority > 0
    points = jnp.minimum(slices * total, jnp.nextafter(total, 0.0))
    index = jnp.searchsorted(running, points, side="right")
    return index, flat[index] / total


def importance_weights(probability: jax.Array, exponent: float) -> jax.Array:
    """(P / min P)^-β: 1 for the batch's least likely draw, less for the others."""
    return (jnp.min(probability) / probability) ** exponent

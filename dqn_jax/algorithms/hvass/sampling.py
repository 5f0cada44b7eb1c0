"""Error-split batch sampling: the tutorial's batches from a swept replay memory.

The tutorial splits the used states by their estimation error into a high-error and a
low-error group and fills each batch from both, at least half from the high-error one.
:func:`prepare_sampling` makes the split once per learning cycle (O(memory));
:func:`sample_batch` then draws a batch in O(batch) and :func:`gather_batch` reads its
states and Q-targets.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from dqn_jax.core.replay import ReplayMemory


class SamplingPlan(NamedTuple):
    """One learning cycle's error split, prepared once so that a batch costs O(batch)."""

    order: jax.Array  # int32 (T*N,): flat indices of the used high-error, used low-error, other states
    available: jax.Array  # int32 (2,): used high-error and low-error states
    quota: jax.Array  # int32 (2,): n_hi, n_lo per batch


def prepare_sampling(errors_flat, used_mask, threshold, min_high_share, batch_size: int) -> SamplingPlan:
    """The high/low-error groups and per-batch quotas (the tutorial's ``prepare_sampling_prob``).

    Among the used states, "low error" means error < threshold, "high error" the rest.
    A batch takes n_hi = int(max(high share, min_high_share) * batch_size) high-error
    states and n_lo = batch_size - n_hi low-error ones. A group holding fewer states
    than its quota gives all of them and the other group fills the rest of the batch.
    """
    batch_size, errors_flat, used_mask = int(batch_size), errors_flat.reshape(-1), used_mask.reshape(-1)
    high, low = used_mask & (errors_flat >= threshold), used_mask & (errors_flat < threshold)
    hi_avail, lo_avail = jnp.sum(high, dtype=jnp.int32), jnp.sum(low, dtype=jnp.int32)
    n_used = hi_avail + lo_avail

    # int(max(share, m) * B) == max(floor(share * B), floor(m * B)); the first in exact integers.
    from_share = (hi_avail * batch_size) // jnp.maximum(n_used, 1)
    from_min = jnp.floor(min_high_share * batch_size).astype(jnp.int32)
    n_hi = jnp.minimum(jnp.maximum(from_share, from_min), batch_size)
    # Short groups: take what exists and let the other group make up the difference.
    n_hi = jnp.clip(n_hi, batch_size - lo_avail, hi_avail)
    n_lo = jnp.minimum(batch_size - n_hi, lo_avail)

    # A stable partition (high, low, unused) by running counts: O(memory), once per cycle.
    unused = ~(high | low)
    slot = jnp.where(high, jnp.cumsum(high, dtype=jnp.int32) - 1,
                     jnp.where(low, hi_avail + jnp.cumsum(low, dtype=jnp.int32) - 1,
                               n_used + jnp.cumsum(unused, dtype=jnp.int32) - 1))
    order = jnp.zeros_like(slot).at[slot].set(jnp.arange(slot.shape[0], dtype=jnp.int32))
    return SamplingPlan(order, jnp.stack([hi_avail, lo_avail]), jnp.stack([n_hi, n_lo]))


def _distinct(key, n, size: int):
    """``size`` distinct integers from [0, n) in random order (the first min(n, size) slots
    when n < size; the rest are 0): a uniform draw without replacement.

    Uniform integers are drawn in blocks and kept, in draw order, when not seen before,
    which is exactly sequential sampling without replacement. One block of 2 x size
    nearly always suffices when n is much larger than ``size``; near n = size a few do.
    The work per block is O(size^2) small comparisons, independent of the memory's size.
    """
    block = 2 * size
    wanted = jnp.minimum(n, size)
    earlier = jnp.tril(jnp.ones((block, block), bool), -1)

    def draw(carry):
        key, chosen, filled = carry
        key, pick = jax.random.split(key)
        candidates = jax.random.randint(pick, (block,), 0, jnp.maximum(n, 1), dtype=jnp.int32)
        kept = jnp.arange(size) < filled
        seen = jnp.any((candidates[:, None] == chosen[None, :]) & kept, axis=1)
        repeat = jnp.any((candidates[:, None] == candidates[None, :]) & earlier, axis=1)
        new = ~seen & ~repeat
        slot = filled + jnp.cumsum(new) - 1
        chosen = chosen.at[jnp.where(new & (slot < wanted), slot, size)].set(candidates, mode="drop")
        return key, chosen, jnp.minimum(filled + jnp.sum(new, dtype=jnp.int32), wanted)

    carry = (key, jnp.zeros((size,), jnp.int32), jnp.zeros((), jnp.int32))
    return jax.lax.while_loop(lambda carry: carry[2] < wanted, draw, carry)[1]


def sample_batch(key, plan: SamplingPlan, batch_size: int) -> jax.Array:
    """Flat indices (into T*N) of one error-split batch, int32 (batch_size,), from ``plan``.

    n_hi high-error then n_lo low-error states, each group drawn uniformly without
    replacement (as the tutorial's ``np.random.choice(..., replace=False)``), so no
    state appears twice. Only when the used memory holds fewer states than a batch do
    states repeat (each used state then appears about equally often). The result is
    undefined for an empty memory.
    """
    batch_size = int(batch_size)
    keys = jax.random.split(key)
    picks = jax.vmap(_distinct, in_axes=(0, 0, None))(keys, plan.available, batch_size)
    n_hi, n_lo = plan.quota[0], plan.quota[1]
    # Position j takes the j-th high-error pick, then the low-error picks; when the
    # memory is smaller than a batch, positions wrap around the n_hi + n_lo distinct picks.
    pos = jnp.arange(batch_size) % jnp.maximum(n_hi + n_lo, 1)
    from_high = pos < n_hi
    in_group = jnp.where(from_high, picks[0, pos], picks[1, jnp.clip(pos - n_hi, 0, batch_size - 1)])
    offset = jnp.where(from_high, 0, plan.available[0])
    return plan.order[in_group + offset]


def gather_batch(memory: ReplayMemory, idx) -> tuple[jax.Array, jax.Array]:
    """States and Q-targets at flat indices ``idx`` (flat index = t * num_games + game)."""
    tn = memory.capacity
    states = memory.states.reshape((tn,) + memory.states.shape[2:])[idx]
    targets = memory.q_values.reshape(tn, memory.num_actions)[idx]
    return states, targets

"""The replay memory: a time x game table of states and what was seen while acting.

Row ``t`` holds one time step of all N games, and each game's column is a contiguous
history. The memory is a pytree of device arrays and every operation is a pure
function over it: acting writes a row in two halves, :func:`record_decision` and
:func:`record_outcome`. What an algorithm reads from it is the algorithm's own: the
tutorial's backward sweep and error-split batches (:mod:`dqn_jax.algorithms.hvass`),
DQN's uniform transitions (:mod:`dqn_jax.algorithms.dqn`).

States keep their own dtype (uint8 images), the network scales them; the memory never
holds a float copy. Rows at and after ``count`` are stale and ignored everywhere.

A circular memory of frame stacks may keep only each state's newest frame
(``ReplayMemory.stack`` > 1, ``memory.storage=frames``): a quarter of the bytes for 4
frames, as Dopamine's and the Nature DQN's memories. :func:`states_at` rebuilds a state
from the frames before it, as the ``frame_stack`` encoding built it while acting.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from dqn_jax.core.priorities import UNSEEN


@flax.struct.dataclass
class ReplayMemory:
    states: jax.Array  # (T, N, *state_shape), the state dtype (uint8 for images); (T, N, H, W, 1) if stack > 1
    q_values: jax.Array  # float32 (T, N, A): estimated while acting, targets after a sweep
    actions: jax.Array  # int32 (T, N)
    rewards: jax.Array  # float32 (T, N), clipped
    end_life: jax.Array  # bool (T, N): a life was lost at this step (terminal for the sweep)
    end_episode: jax.Array  # bool (T, N)
    errors: jax.Array  # float32 (T, N): |target - estimate| when last measured (core.priorities)
    count: jax.Array  # int32 scalar: rows closed (at most ``rows`` unless circular)
    # Circular (DQN): rows are written at count % rows, overwriting the oldest, and
    # count keeps growing. Otherwise (the tutorial's) a full memory writes nothing.
    circular: bool = flax.struct.field(pytree_node=False, default=False)
    # Frames in a state when only each state's newest frame is kept (1: states kept whole).
    stack: int = flax.struct.field(pytree_node=False, default=1)

    @property
    def rows(self) -> int:
        """Rows (time steps of all games) the memory holds."""
        return self.actions.shape[0]

    @property
    def num_games(self) -> int:
        return self.actions.shape[1]

    @property
    def capacity(self) -> int:
        """States the memory holds when full (rows x games)."""
        return self.rows * self.num_games

    @property
    def num_actions(self) -> int:
        return self.q_values.shape[-1]


def init_memory(rows: int, num_games: int, state_shape, state_dtype, num_actions: int,
                circular: bool = False, stack: int = 1) -> ReplayMemory:
    """An empty memory of ``rows`` rows for ``num_games`` games (``circular``, ``stack``: see
    ReplayMemory; ``stack`` > 1 needs a circular memory of ``stack``-frame states)."""
    tn = (int(rows), int(num_games))
    stack = int(stack)
    if stack > 1 and not (circular and state_shape[-1] == stack):
        raise ValueError(f"a memory of frames needs a circular memory of {stack}-frame states, "
                         f"not {'circular' if circular else 'reset'} {tuple(state_shape)}")
    stored = tuple(state_shape) if stack == 1 else (*tuple(state_shape)[:-1], 1)
    return ReplayMemory(
        states=jnp.zeros(tn + stored, dtype=state_dtype),
        q_values=jnp.zeros(tn + (int(num_actions),), jnp.float32),
        actions=jnp.zeros(tn, jnp.int32),
        rewards=jnp.zeros(tn, jnp.float32),
        end_life=jnp.zeros(tn, bool),
        end_episode=jnp.zeros(tn, bool),
        errors=jnp.zeros(tn, jnp.float32),
        count=jnp.zeros((), jnp.int32),
        circular=circular,
        stack=stack,
    )


def _open_row(memory: ReplayMemory):
    """The row the next step is written into (``rows``, out of range, when a memory that
    is not circular is full)."""
    return memory.count % memory.rows if memory.circular else memory.count


def _put_row(table: jax.Array, row, value) -> jax.Array:
    """``table`` with ``value`` in row ``row``; a row out of range writes nothing."""
    return table.at[row].set(jnp.asarray(value, table.dtype), mode="drop")


def record_decision(memory: ReplayMemory, states, q_values, actions) -> ReplayMemory:
    """Write what the agent saw and chose into row ``count`` (the row stays open).

    Acting writes a row in two halves: the decision before the games step, the outcome
    after. Keeping them apart lets the acting step write its half inside the same jitted
    call that chose the actions: one dispatch per step, no state copy through the host.
    A full memory writes nothing.
    """
    row = _open_row(memory)
    states = states if memory.stack == 1 else states[..., -1:]  # the newest frame
    return memory.replace(states=_put_row(memory.states, row, states),
                          q_values=_put_row(memory.q_values, row, q_values),
                          actions=_put_row(memory.actions, row, actions))


def record_outcome(memory: ReplayMemory, rewards, end_life, end_episode, reward_clip=1.0,
                   pending=True) -> ReplayMemory:
    """Write the games' response into row ``count`` and close it (``count`` + 1).

    Rewards are stored clipped to [-reward_clip, reward_clip]. ``pending`` (may be
    traced) false writes nothing: there is no open row to close. A full memory writes
    nothing and leaves ``count`` at ``rows``. A circular memory marks the row's errors
    ``UNSEEN``: the row may hold an older transition's error, not this one's.
    """
    pending = jnp.asarray(pending, bool)
    row = jnp.where(pending, _open_row(memory), memory.rows)  # out of range: dropped
    clipped = jnp.clip(jnp.asarray(rewards, jnp.float32), -reward_clip, reward_clip)
    errors = _put_row(memory.errors, row, UNSEEN) if memory.circular else memory.errors
    return memory.replace(
        rewards=_put_row(memory.rewards, row, clipped),
        end_life=_put_row(memory.end_life, row, end_life),
        end_episode=_put_row(memory.end_episode, row, end_episode),
        errors=errors,
        count=_closed_count(memory, pending.astype(jnp.int32)),
    )


def _closed_count(memory: ReplayMemory, closed) -> jax.Array:
    count = memory.count + closed
    return (count if memory.circular else jnp.minimum(count, memory.rows)).astype(jnp.int32)


# The memory is donated so the (multi-GB) buffers are updated in place.
record_outcome_jit = jax.jit(record_outcome, donate_argnums=0)


def states_at(memory: ReplayMemory, position, game) -> jax.Array:
    """The states at ``position`` (as ``count`` counts rows) of ``game``, both int arrays (B,).

    A memory of frames rebuilds each from the frames at positions p - stack + 1 .. p, as
    the ``frame_stack`` encoding stacked them: a frame of an earlier episode, or from before
    the memory's first row (the games started there), is replaced by the episode's first
    frame. Needs p - stack + 1 > count - rows where the memory has wrapped: those frames
    are still held."""
    if memory.stack == 1:
        return memory.states[position % memory.rows, game]
    frames = [memory.states[position % memory.rows, game]]  # newest first
    cut = jnp.zeros(position.shape, bool)
    for back in range(1, memory.stack):  # the stack is small and static: unrolled
        earlier = position - back
        cut = cut | (earlier < 0) | memory.end_episode[earlier % memory.rows, game]
        frame = memory.states[earlier % memory.rows, game]
        frames.append(jnp.where(cut.reshape(cut.shape + (1,) * (frame.ndim - 1)), frames[-1], frame))
    return jnp.concatenate(frames[::-1], axis=-1)


def reset(memory: ReplayMemory) -> ReplayMemory:
    """Empty the memory (count 0) without reallocating it."""
    return memory.replace(count=jnp.zeros((), jnp.int32))


def used_rows_mask(memory: ReplayMemory) -> jax.Array:
    """bool (T, N): true for states in rows 0..count-1."""
    rows = jnp.arange(memory.rows) < memory.count
    return jnp.broadcast_to(rows[:, None], (memory.rows, memory.num_games))

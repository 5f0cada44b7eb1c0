"""The replay memory: a time x game table of states and what was seen while acting.

Row ``t`` holds one time step of all N games, so one ``add`` writes a whole row and
each game's column is a contiguous history. The memory is a pytree of device arrays
and every operation is a pure function over it:

* :func:`add` writes the next row (jit it with the memory donated: :data:`add_jit`);
  acting writes it in two halves, :func:`record_decision` and :func:`record_outcome`;
* :func:`recompute_targets` walks each game's history backwards and turns the Q-values estimated
  while acting into training targets (the tutorial's backward sweep), exactly, either
  with a sequential ``lax.scan`` or in parallel with ``lax.associative_scan``;
* error-split batches are drawn from it by :mod:`dqn_jax.sampling`.

States keep their own dtype (uint8 images), the network scales them; the memory never
holds a float copy. Rows at and after ``count`` are stale and ignored everywhere.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

# Stands in for "no other action" in the max-plus maps; finite so that 0 * NEG is 0, not nan.
NEG = -1e30


@flax.struct.dataclass
class ReplayMemory:
    states: jax.Array  # (T, N, *state_shape), the state dtype (uint8 for images)
    q_values: jax.Array  # float32 (T, N, A): estimated while acting, targets after a sweep
    actions: jax.Array  # int32 (T, N)
    rewards: jax.Array  # float32 (T, N), clipped
    end_life: jax.Array  # bool (T, N): a life was lost at this step (terminal for the sweep)
    end_episode: jax.Array  # bool (T, N)
    errors: jax.Array  # float32 (T, N): |target - estimate| from the last sweep
    count: jax.Array  # int32 scalar: rows closed (at most ``rows`` unless circular)
    # Circular (DQN): rows are written at count % rows, overwriting the oldest, and
    # count keeps growing. Otherwise (the tutorial's) a full memory writes nothing.
    circular: bool = flax.struct.field(pytree_node=False, default=False)

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
                circular: bool = False) -> ReplayMemory:
    """An empty memory of ``rows`` rows for ``num_games`` games (``circular``: see ReplayMemory)."""
    tn = (int(rows), int(num_games))
    return ReplayMemory(
        states=jnp.zeros(tn + tuple(state_shape), dtype=state_dtype),
        q_values=jnp.zeros(tn + (int(num_actions),), jnp.float32),
        actions=jnp.zeros(tn, jnp.int32),
        rewards=jnp.zeros(tn, jnp.float32),
        end_life=jnp.zeros(tn, bool),
        end_episode=jnp.zeros(tn, bool),
        errors=jnp.zeros(tn, jnp.float32),
        count=jnp.zeros((), jnp.int32),
        circular=circular,
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
    return memory.replace(states=_put_row(memory.states, row, states),
                          q_values=_put_row(memory.q_values, row, q_values),
                          actions=_put_row(memory.actions, row, actions))


def record_outcome(memory: ReplayMemory, rewards, end_life, end_episode, reward_clip=1.0,
                   pending=True) -> ReplayMemory:
    """Write the games' response into row ``count`` and close it (``count`` + 1).

    Rewards are stored clipped to [-reward_clip, reward_clip]. ``pending`` (may be
    traced) false writes nothing: there is no open row to close. A full memory writes
    nothing and leaves ``count`` at ``rows``.
    """
    pending = jnp.asarray(pending, bool)
    row = jnp.where(pending, _open_row(memory), memory.rows)  # out of range: dropped
    clipped = jnp.clip(jnp.asarray(rewards, jnp.float32), -reward_clip, reward_clip)
    return memory.replace(
        rewards=_put_row(memory.rewards, row, clipped),
        end_life=_put_row(memory.end_life, row, end_life),
        end_episode=_put_row(memory.end_episode, row, end_episode),
        count=_closed_count(memory, pending.astype(jnp.int32)),
    )


def add(memory: ReplayMemory, states, q_values, actions, rewards, end_life, end_episode,
        reward_clip=1.0) -> ReplayMemory:
    """Write one whole time step of all games into row ``count`` and advance ``count``.

    Rewards are stored clipped to [-reward_clip, reward_clip]. Adding to a full memory
    writes nothing and leaves ``count`` at ``rows``: sweep and reset before that.
    """
    memory = record_decision(memory, states, q_values, actions)
    return record_outcome(memory, rewards, end_life, end_episode, reward_clip)


def _closed_count(memory: ReplayMemory, closed) -> jax.Array:
    count = memory.count + closed
    return (count if memory.circular else jnp.minimum(count, memory.rows)).astype(jnp.int32)


# The memory is donated so the (multi-GB) buffers are updated in place.
add_jit = jax.jit(add, donate_argnums=0)
record_outcome_jit = jax.jit(record_outcome, donate_argnums=0)


def reset(memory: ReplayMemory) -> ReplayMemory:
    """Empty the memory (count 0) without reallocating it."""
    return memory.replace(count=jnp.zeros((), jnp.int32))


def used_rows_mask(memory: ReplayMemory) -> jax.Array:
    """bool (T, N): true for states in rows 0..count-1."""
    rows = jnp.arange(memory.rows) < memory.count
    return jnp.broadcast_to(rows[:, None], (memory.rows, memory.num_games))


# ---------------------------------------------------------------------------- sweep
#
# Only Q[k, action[k]] changes in a sweep, so the best value of an updated row is
# M_k = max(c_k, r_k + a_k * M_{k+1}), with c_k the best of the other actions and
# a_k = discount (0 after a terminal). Each row is the map x -> max(c, a*x + b) with
# a >= 0; row count-1 (the sequence end) is the constant map giving its own max Q and
# rows after it are identities. Both methods compute every M_k from these maps; the
# targets follow as r_k + a_k * M_{k+1}.
#
# Everything else works on per-row summaries of the other actions (taken from
# per-action slices, which XLA on CPU reduces far faster than the short last axis), so
# the (T, N, A) table is read once and written once.


class _Rows(NamedTuple):
    """Per-row (T, N) summaries: the taken action's Q and the other actions' Q-values."""

    q_taken: jax.Array
    best_other: jax.Array  # NEG when there is no other action
    min_other: jax.Array  # +inf when there is no other action
    sum_other: jax.Array
    sq_other: jax.Array  # sum of squares


def _summarise_rows(q, actions) -> _Rows:
    q_taken = jnp.zeros(actions.shape, q.dtype)
    best = jnp.full(actions.shape, NEG, q.dtype)
    least = jnp.full(actions.shape, jnp.inf, q.dtype)
    total = jnp.zeros(actions.shape, q.dtype)
    squares = jnp.zeros(actions.shape, q.dtype)
    for i in range(q.shape[-1]):
        qi, hit = q[..., i], actions == i
        q_taken = jnp.where(hit, qi, q_taken)
        best = jnp.where(hit, best, jnp.maximum(best, qi))
        least = jnp.where(hit, least, jnp.minimum(least, qi))
        total = jnp.where(hit, total, total + qi)
        squares = jnp.where(hit, squares, squares + qi * qi)
    return _Rows(q_taken, best, least, total, squares)


def _row_max_scan(a, b, c):
    """M_k by applying the maps one after another, newest row first."""

    def step(x, abc):
        a_k, b_k, c_k = abc
        x = jnp.maximum(c_k, a_k * x + b_k)
        return x, x

    _, row_max = jax.lax.scan(step, jnp.zeros(a.shape[1:], a.dtype), (a, b, c), reverse=True)
    return row_max


def _compose(later, earlier):
    """earlier ∘ later for maps x -> max(c, a*x + b) with a >= 0.

    ``lax.associative_scan(reverse=True)`` calls this with the accumulated later part
    first, so the result is applied to the far end's value first.
    """
    a2, b2, c2 = later
    a1, b1, c1 = earlier
    return a1 * a2, a1 * b2 + b1, jnp.maximum(c1, a1 * c2 + b1)


def _row_max_associative(a, b, c):
    """M_k from the composition of all maps from row k on (a parallel prefix scan)."""
    _, b_all, c_all = jax.lax.associative_scan(_compose, (a, b, c), reverse=True)
    # Applied to x = 0; any x gives the same for used rows, whose maps end in a constant.
    return jnp.maximum(c_all, b_all)


_ROW_MAX_METHODS = {"scan": _row_max_scan, "associative": _row_max_associative}

# The sweep runs as three jitted stages rather than one: inside a single program XLA
# on CPU fuses the row summaries into every level of the parallel scan and recomputes
# them there (optimization_barrier is dropped on CPU), which made the associative sweep
# three times slower. Separate stages materialise them once.


@jax.jit
def _prepare(memory: ReplayMemory, discount):
    """The row maps (a, b, c), the row summaries, the slopes and the inner-row mask."""
    rows = _summarise_rows(memory.q_values, memory.actions)
    k = jnp.arange(memory.rows)[:, None]
    inner = k < memory.count - 1  # rows with a successor in this sweep
    last = k == memory.count - 1
    done = memory.end_life | memory.end_episode
    slope = jnp.where(done, 0.0, jnp.asarray(discount, memory.q_values.dtype))
    a = jnp.where(inner, slope, jnp.where(last, 0.0, 1.0))
    b = jnp.where(inner, memory.rewards,
                  jnp.where(last, jnp.maximum(rows.q_taken, rows.best_other), 0.0))
    c = jnp.where(inner, rows.best_other, NEG)
    return (a, b, c), rows, slope, inner


_ROW_MAX = {name: jax.jit(fn) for name, fn in _ROW_MAX_METHODS.items()}


@partial(jax.jit, donate_argnums=0)
def _write_targets(memory: ReplayMemory, row_max, rows: _Rows, slope, inner):
    next_max = jnp.concatenate([row_max[1:], jnp.zeros_like(row_max[:1])], axis=0)
    target = memory.rewards + slope * next_max
    used = jnp.arange(memory.rows)[:, None] < memory.count
    errors = jnp.where(inner, jnp.abs(target - rows.q_taken), jnp.where(used, 0.0, memory.errors))
    write = inner[..., None] & (memory.actions[..., None] == jnp.arange(memory.num_actions))
    q_values = jnp.where(write, target[..., None], memory.q_values)
    stats = _sweep_stats(memory, rows, jnp.where(inner, target, rows.q_taken), errors, used)
    return memory.replace(q_values=q_values, errors=errors), stats


def _sweep_stats(memory: ReplayMemory, rows: _Rows, new_taken, errors, used) -> dict:
    """Statistics of the updated Q-values and errors over the used rows (zeros if none)."""
    used = jnp.broadcast_to(used, errors.shape)
    n_states = jnp.sum(used)
    n_q = jnp.maximum(n_states * memory.num_actions, 1)
    q_mean = jnp.sum(jnp.where(used, rows.sum_other + new_taken, 0.0)) / n_q
    q_sq = jnp.sum(jnp.where(used, rows.sq_other + new_taken * new_taken, 0.0)) / n_q
    q_min = jnp.min(jnp.where(used, jnp.minimum(rows.min_other, new_taken), jnp.inf))
    q_max = jnp.max(jnp.where(used, jnp.maximum(rows.best_other, new_taken), -jnp.inf))
    any_used = n_states > 0
    n_states = jnp.maximum(n_states, 1)
    return {
        "q_min": jnp.where(any_used, q_min, 0.0),
        "q_mean": q_mean,
        "q_max": jnp.where(any_used, q_max, 0.0),
        "q_std": jnp.sqrt(jnp.maximum(q_sq - q_mean**2, 0.0)),
        "error_mean": jnp.sum(jnp.where(used, errors, 0.0)) / n_states,
        "error_max": jnp.max(jnp.where(used, errors, 0.0)),
        "reward_nonzero_share": jnp.sum(used & (memory.rewards != 0)) / n_states,
    }


def recompute_targets(memory: ReplayMemory, discount, method: str = "associative") -> tuple[ReplayMemory, dict]:
    """The backward sweep: Q-values estimated while acting become training targets.

    Per game, for k from count-2 down to 0: target = r[k] if the step ended a life or
    an episode, else r[k] + discount * max_a Q[k+1] (Q[k+1] as already updated);
    errors[k] = |target - Q[k, action[k]]|; Q[k, action[k]] = target. Row count-1 keeps
    its Q-values with error 0; rows from count on are left alone. ``count`` is traced,
    so one compilation serves every fill level. ``method`` is "associative" (parallel,
    for accelerators) or "scan" (sequential); both are exact.

    The memory is DONATED: use the returned memory, not the one passed in.
    Returns the memory and a dict of scalar statistics (jax scalars) over the used rows:
    q_min, q_mean, q_max, q_std, error_mean, error_max, reward_nonzero_share.
    """
    if method not in _ROW_MAX:
        raise ValueError(f"unknown target method {method!r}; choose one of {sorted(_ROW_MAX)}")
    maps, rows, slope, inner = _prepare(memory, discount)
    row_max = _ROW_MAX[method](*maps)
    return _write_targets(memory, row_max, rows, slope, inner)


def resolve_target_method(method: str) -> str:
    """``"auto"`` is "scan" on a CPU (about twice as fast there), "associative" elsewhere."""
    if method == "auto":
        return "scan" if jax.default_backend() == "cpu" else "associative"
    return method


def target_cache_sizes() -> dict[str, int]:
    """Compiled variants of each sweep stage (one per memory shape once warm)."""
    sizes = {"prepare": _prepare._cache_size(), "write_targets": _write_targets._cache_size()}
    sizes.update({f"row_max_{name}": fn._cache_size() for name, fn in _ROW_MAX.items()})
    return sizes

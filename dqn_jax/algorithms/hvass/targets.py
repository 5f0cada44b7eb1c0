"""The tutorial's backward sweep: Q-values estimated while acting become training targets.

:func:`recompute_targets` walks each game's history in the replay memory backwards,
exactly, either with a sequential ``lax.scan`` or in parallel with
``lax.associative_scan``. ``lam`` mixes in the one-step target (λ-returns,
``algorithm=sweep_dqn``); without it the sweep is the tutorial's.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from dqn_jax.core.replay import ReplayMemory

# Stands in for "no other action" in the max-plus maps; finite so that 0 * NEG is 0, not nan.
NEG = -1e30

# Only Q[k, action[k]] changes in a sweep, so the best value of an updated row is
# M_k = max(c_k, r_k + a_k * M_{k+1}), with c_k the best of the other actions and
# a_k = discount (0 after a terminal). Each row is the map x -> max(c, a*x + b) with
# a >= 0; row count-1 (the sequence end) is the constant map giving its own max Q and
# rows after it are identities. Both methods compute every M_k from these maps; the
# targets follow as r_k + a_k * M_{k+1}.
#
# With lam (λ), the target is G_k = r_k + a_k [(1 - λ) V_{k+1} + λ M_{k+1}], V_{k+1} the
# row's best Q before the sweep: the map of row k is x -> max(c_k, λ a_k x + b_k), with
# b_k = r_k + (1 - λ) a_k V_{k+1}, still of the same form. λ = 1 is the tutorial's
# recursion, λ = 0 the one-step target.
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


def _lambda_terms(memory: ReplayMemory, rows: _Rows, slope, lam):
    """(b_k, λ a_k) of the inner rows' maps; the tutorial's (r_k, a_k) when ``lam`` is None."""
    if lam is None:
        return memory.rewards, slope
    value = jnp.maximum(rows.q_taken, rows.best_other)
    next_value = jnp.concatenate([value[1:], jnp.zeros_like(value[:1])], axis=0)
    return memory.rewards + slope * (1.0 - lam) * next_value, slope * lam


@jax.jit
def _prepare(memory: ReplayMemory, discount, lam=None):
    """The row maps (a, b, c), the row summaries, the slopes and the inner-row mask."""
    rows = _summarise_rows(memory.q_values, memory.actions)
    k = jnp.arange(memory.rows)[:, None]
    inner = k < memory.count - 1  # rows with a successor in this sweep
    last = k == memory.count - 1
    done = memory.end_life | memory.end_episode
    slope = jnp.where(done, 0.0, jnp.asarray(discount, memory.q_values.dtype))
    offset, step = _lambda_terms(memory, rows, slope, lam)
    a = jnp.where(inner, step, jnp.where(last, 0.0, 1.0))
    b = jnp.where(inner, offset,
                  jnp.where(last, jnp.maximum(rows.q_taken, rows.best_other), 0.0))
    c = jnp.where(inner, rows.best_other, NEG)
    return (a, b, c), rows, slope, inner


_ROW_MAX = {name: jax.jit(fn) for name, fn in _ROW_MAX_METHODS.items()}


@partial(jax.jit, donate_argnums=0)
def _write_targets(memory: ReplayMemory, row_max, rows: _Rows, slope, inner, lam=None):
    next_max = jnp.concatenate([row_max[1:], jnp.zeros_like(row_max[:1])], axis=0)
    offset, step = _lambda_terms(memory, rows, slope, lam)
    target = offset + step * next_max
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


def recompute_targets(memory: ReplayMemory, discount, method: str = "associative",
                      lam=None) -> tuple[ReplayMemory, dict]:
    """The backward sweep: Q-values estimated while acting become training targets.

    Per game, for k from count-2 down to 0: target = r[k] if the step ended a life or
    an episode, else r[k] + discount * max_a Q[k+1] (Q[k+1] as already updated);
    errors[k] = |target - Q[k, action[k]]|; Q[k, action[k]] = target. Row count-1 keeps
    its Q-values with error 0; rows from count on are left alone. ``count`` is traced,
    so one compilation serves every fill level. ``method`` is "associative" (parallel,
    for accelerators) or "scan" (sequential); both are exact.

    ``lam`` (λ in [0, 1], may be traced; None: the tutorial's sweep, unchanged) mixes the
    one-step target in: target = r[k] + discount * ((1 - λ) * V[k+1] + λ * max_a Q[k+1]),
    V[k+1] the row's best Q-value before the sweep and Q[k+1] as already updated. λ = 1
    gives the tutorial's targets, λ = 0 the one-step DQN targets.

    The memory is DONATED: use the returned memory, not the one passed in.
    Returns the memory and a dict of scalar statistics (jax scalars) over the used rows:
    q_min, q_mean, q_max, q_std, error_mean, error_max, reward_nonzero_share.
    """
    if method not in _ROW_MAX:
        raise ValueError(f"unknown target method {method!r}; choose one of {sorted(_ROW_MAX)}")
    lam = None if lam is None else jnp.asarray(lam, memory.q_values.dtype)
    maps, rows, slope, inner = _prepare(memory, discount, lam)
    row_max = _ROW_MAX[method](*maps)
    return _write_targets(memory, row_max, rows, slope, inner, lam)


def resolve_target_method(method: str) -> str:
    """``"auto"`` is "scan" on a CPU (about twice as fast there), "associative" elsewhere."""
    if method == "auto":
        return "scan" if jax.default_backend() == "cpu" else "associative"
    return method

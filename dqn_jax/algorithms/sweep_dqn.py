"""The tutorial's sweep inside DQN (``algorithm=sweep_dqn``): λ-returns over a refreshed window.

DQN's acting, circular memory, warm-up and credit counting (:class:`dqn.Dqn`, inherited)
and its gradient step (:func:`dqn.descend`, :class:`dqn.Stats`), trained on targets that
the tutorial's backward sweep recomputes, as Daley & Amato (2019, "Reconciling
λ-returns with experience replay") refresh a cache:

* every ``refresh_states`` states (before the gradient step that falls due then) the
  network's current parameters are copied (``target_params``: the refresh is the target
  copy) and evaluate Q for every state of a window of the memory: its last
  ``window // games`` closed rows and the open row (the states just decided on). Those
  Q-values replace the window's ``q_values``, then :func:`targets.recompute_targets`
  sweeps it backwards with ``lam``: G_k = r_k after a lost life or an episode's end,
  else r_k + γ[(1 − λ) V_{k+1} + λ max(c_{k+1}, G_{k+1})]. The open row's Q-values are
  the bootstrap (its outcome is not recorded yet, so it is the sweep's last row, whose
  Q-values stay);
* a gradient step, every ``train_every`` states after the warm-up, samples uniformly
  (with replacement) the window's closed rows as they were at the refresh (rows written
  since have no target yet) and regresses Q(s, a) on the stored target
  ``q_values[row, game, a]`` with the Huber loss (``huber_delta``; None: squared). No
  target network enters the loss.

Where the code argued against the brief: the window's last row is the open row, not the
last closed one, so no closed row is spent as a bootstrap; the refresh is taken inside
``learn`` (the gradient step's counter decides it), so the training loop needs nothing
new. ``config.validate`` keeps the window and the rows written until the next refresh
inside the memory, so no sampled row is overwritten before then. The memory is not
in the checkpoint (as DQN's): a resumed run warms up again and refreshes before its first
step, unless ``checkpoint.memory=true`` saved it beside the checkpoint.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dqn_jax.algorithms import dqn
from dqn_jax.algorithms.base import MemorySpec, counter
from dqn_jax.algorithms.hvass.targets import recompute_targets, resolve_target_method
from dqn_jax.core import priorities
from dqn_jax.core.replay import ReplayMemory

# States the network evaluates at once when a refresh re-estimates the window (the
# tutorial's CNN holds about 1.5 MB of activations per Atari state; the results do not
# depend on it: the MLP's Q-values are the same to the bit in chunks of 64 to 626 rows).
EVAL_STATES = 1024


def window_bounds(count, window_rows: int):
    """(start, rows): the window's closed rows are start .. start+rows-1 (counted as
    ``memory.count`` counts them), the last ``window_rows`` or all there are."""
    rows = jnp.minimum(count, window_rows)
    return count - rows, rows


def evaluate_rows(network, params, states, index) -> jax.Array:
    """Q-values (R, N, A) of the states in rows ``index`` (C, R / C), a chunk of rows at a time."""

    def chunk(rows):
        picked = states[rows]
        q = network.apply(params, picked.reshape(-1, *picked.shape[2:]))
        return q.reshape(*picked.shape[:2], -1).astype(jnp.float32)

    q = jax.lax.map(chunk, index)
    return q.reshape(-1, *q.shape[2:])


def gather_window(network, params, memory: ReplayMemory, window_rows: int, chunk_rows: int):
    """The window as a memory of its own (rows 0 .. rows-1 closed, row ``rows`` the open row,
    count rows + 1; later rows unused), its Q-values re-estimated by ``params``; and (start, rows)."""
    start, rows = window_bounds(memory.count, window_rows)
    padded = math.ceil((window_rows + 1) / chunk_rows) * chunk_rows
    index = (start + jnp.arange(padded)) % memory.rows
    q = evaluate_rows(network, params, memory.states, index.reshape(-1, chunk_rows))[:window_rows + 1]
    index = index[:window_rows + 1]
    window = ReplayMemory(
        states=jnp.zeros((window_rows + 1, memory.num_games, 0), memory.states.dtype),  # not read by the sweep
        q_values=q, actions=memory.actions[index], rewards=memory.rewards[index], end_life=memory.end_life[index],
        end_episode=memory.end_episode[index], errors=memory.errors[index], count=(rows + 1).astype(jnp.int32))
    return window, start, rows


def write_window(memory: ReplayMemory, window: ReplayMemory, start, rows) -> ReplayMemory:
    """``memory`` with the swept window's closed rows (Q-values and errors) written back."""
    k = jnp.arange(window.rows)
    destination = jnp.where(k < rows, (start + k) % memory.rows, memory.rows)  # out of range: dropped
    return memory.replace(q_values=memory.q_values.at[destination].set(window.q_values, mode="drop"),
                          errors=memory.errors.at[destination].set(window.errors, mode="drop"))


def sample_window(key, memory: ReplayMemory, start, rows, batch_size: int):
    """A uniform batch (with replacement) of the window's closed rows: (states, actions, targets),
    the target the stored Q-value of the action taken. Needs ``rows`` >= 1."""
    row_key, game_key = jax.random.split(key)
    row = (start + jax.random.randint(row_key, (batch_size,), 0, rows)) % memory.rows
    game = jax.random.randint(game_key, (batch_size,), 0, memory.num_games)
    return _window_batch(memory, row, game)


def sample_window_prioritised(key, memory: ReplayMemory, start, rows, batch_size: int, exponent: float,
                              importance_exponent: float):
    """A batch of the window's closed rows drawn by the priority of their stored errors
    (:mod:`dqn_jax.core.priorities`; a refresh measures them all): returns
    ((states, actions, targets), their (row, game), their importance weights)."""
    inside = (jnp.arange(memory.rows) - start) % memory.rows < rows
    valid = jnp.broadcast_to(inside[:, None], memory.errors.shape)
    index, probability = priorities.draw(key, priorities.priorities(memory.errors, valid, exponent), batch_size)
    row, game = jnp.divmod(index, memory.num_games)
    weights = priorities.importance_weights(probability, importance_exponent)
    return _window_batch(memory, row, game), (row, game), weights


def _window_batch(memory: ReplayMemory, row, game):
    actions = memory.actions[row, game]
    return memory.states[row, game], actions, memory.q_values[row, game, actions]


class Refresh:
    """Re-estimate the window with given parameters and sweep it: jitted in two parts around
    :func:`targets.recompute_targets`; the memory is donated."""

    def __init__(self, network, *, window_rows: int, games: int, discount: float, lam: float, method: str):
        self.window_rows, self.discount, self.lam = int(window_rows), float(discount), float(lam)
        self.method = resolve_target_method(method)
        chunk_rows = min(max(1, EVAL_STATES // games), self.window_rows + 1)
        self._gather = jax.jit(lambda params, memory: gather_window(network, params, memory, self.window_rows,
                                                                    chunk_rows))
        self._write = jax.jit(write_window, donate_argnums=0)

    def __call__(self, params, memory: ReplayMemory):
        """Returns (memory, start, rows, the sweep's statistics), all on the device."""
        window, start, rows = self._gather(params, memory)
        window, swept = recompute_targets(window, self.discount, self.method, self.lam)
        return self._write(memory, window, start, rows), start, rows, swept


class WindowUpdate:
    """One gradient step on a batch of the refreshed window, jitted once; the train state and
    the statistics are donated. ``priority_exponent`` > 0: the batch is drawn by the
    priority of the window's stored errors, and the step writes those it measured (as
    :class:`dqn.Update`)."""

    learners = None  # it learns on the memory's device (no algorithm.learner_devices)

    def __init__(self, network, optimizer, *, batch_size: int, huber_delta: float | None,
                 priority_exponent: float = 0.0, importance_exponent: float = 0.5):
        self.network, self.optimizer, self.batch_size = network, optimizer, int(batch_size)
        self.huber_delta = None if huber_delta is None else float(huber_delta)
        self.priority_exponent, self.importance_exponent = float(priority_exponent), float(importance_exponent)
        self._jit = jax.jit(self._step, donate_argnums=(0, 1))
        self._jit_prioritised = jax.jit(self._prioritised_step, donate_argnums=(0, 1, 3))

    def __call__(self, train_state, stats, memory, key, start, rows, learning_rate):
        """Returns (train_state, stats, memory, key)."""
        if self.priority_exponent > 0:
            train_state, stats, errors, key = self._jit_prioritised(
                train_state, stats, memory.replace(errors=None), memory.errors, key, start, rows, learning_rate)
            return train_state, stats, memory.replace(errors=errors), key
        train_state, stats, key = self._jit(train_state, stats, memory, key, start, rows, learning_rate)
        return train_state, stats, memory, key

    def _step(self, state: dqn.TargetTrainState, stats: dqn.Stats, memory, key, start, rows, learning_rate):
        key, pick = jax.random.split(key)
        batch = sample_window(pick, memory, start, rows, self.batch_size)
        state, stats, _ = self._descend(state, stats, batch, learning_rate)
        return state, stats, key

    def _prioritised_step(self, state: dqn.TargetTrainState, stats: dqn.Stats, memory, errors, key, start, rows,
                          learning_rate):
        key, pick = jax.random.split(key)
        batch, (row, game), weights = sample_window_prioritised(
            pick, memory.replace(errors=errors), start, rows, self.batch_size, self.priority_exponent,
            self.importance_exponent)
        state, stats, measured = self._descend(state, stats, batch, learning_rate, weights)
        return state, stats, errors.at[row, game].set(measured), key

    def _descend(self, state: dqn.TargetTrainState, stats: dqn.Stats, batch, learning_rate, weights=None):
        """Returns (state, stats, the batch's errors |target - Q(s, a)| before the step)."""
        states, actions, targets = batch
        params, opt_state, loss, taken = dqn.descend(self.network, self.optimizer, state, states, actions, targets,
                                                     learning_rate, self.huber_delta, weights=weights)
        state = state.replace(params=params, opt_state=opt_state, updates=state.updates + 1)
        return state, stats.add(loss, taken), jnp.abs(targets - taken)


@flax.struct.dataclass
class SweepDqnState:
    """All the algorithm carries between steps; the checkpoint holds it whole."""

    train: dqn.TargetTrainState  # target_params: the parameters of the last refresh
    stats: dqn.Stats  # the cycle's gradient steps so far
    recorded: np.ndarray  # int32: states in the memory since it was emptied
    credit: np.ndarray  # int32: states recorded after the warm-up and not yet trained on
    to_refresh: np.ndarray  # int32: gradient steps before the next refresh (0: refresh first)
    window_start: np.ndarray  # int32: the refreshed window's first row, as memory.count counts rows
    window_rows: np.ndarray  # int32: its closed rows, where the batches come from
    refreshes: np.ndarray  # int32: refreshes since the run began


class SweepDqn(dqn.Dqn):
    """DQN trained on the backward sweep's targets over a window refreshed every ``refresh_states``."""

    extra_network_copies = 1  # the parameters of the last refresh

    def __init__(self, update: WindowUpdate, refresh: Refresh, memory: MemorySpec, signals, *, warmup: int,
                 train_every: int, report_every: int, refresh_every: int):
        """``refresh_every`` counts gradient steps (:meth:`from_config` converts the config's states)."""
        super().__init__(update, memory, signals, warmup=warmup, train_every=train_every, report_every=report_every)
        self.refresh, self.refresh_every = refresh, int(refresh_every)
        self._bounds = None  # the window's (start, rows) on the device, set by each refresh

    @classmethod
    def from_config(cls, cfg, parts, memory: MemorySpec, signals) -> SweepDqn:
        algo = cfg.algorithm
        update = WindowUpdate(parts.network, parts.optimizer, batch_size=cfg.memory.batch_size,
                              huber_delta=algo.huber_delta, priority_exponent=algo.priority_exponent,
                              importance_exponent=algo.importance_exponent)
        refresh = Refresh(parts.network, window_rows=algo.window // memory.games, games=memory.games,
                          discount=algo.discount, lam=algo.lam, method="auto")
        return cls(update, refresh, memory, signals, warmup=algo.warmup, train_every=algo.train_every,
                   report_every=algo.report_every, refresh_every=algo.refresh_states // algo.train_every)

    def init(self, train_state) -> SweepDqnState:
        return SweepDqnState(dqn.with_target(train_state), dqn.Stats.zeros(), *(counter(0) for _ in range(6)))

    def empty_memory(self, state: SweepDqnState):
        state, memory = super().empty_memory(state)
        return state.replace(to_refresh=counter(0)), memory  # nothing refreshed in the new memory yet

    def learn(self, state: SweepDqnState, memory, key, states: int, hooks):
        """A refresh when one is due, then one gradient step."""
        figures = None
        if int(state.to_refresh) == 0:
            state, memory, figures = self._refresh(state, memory, hooks)
        elif self._bounds is None:  # resumed with the memory it saved: the window its state names
            self._bounds = (jnp.int32(state.window_start), jnp.int32(state.window_rows))
        train, stats, memory, key = self.update(state.train, state.stats, memory, key, *self._bounds,
                                        self._learning_rate_array)
        state = state.replace(train=train, stats=stats, credit=counter(state.credit - self.train_every),
                              to_refresh=counter(state.to_refresh - 1))
        return state, memory, key, figures

    def _refresh(self, state: SweepDqnState, memory, hooks):
        train = state.train.replace(target_params=jax.tree_util.tree_map(jnp.copy, state.train.params))
        memory, start, rows, swept = self.refresh(train.target_params, memory)
        self._bounds = (start, rows)
        start, rows, swept = jax.device_get((start, rows, swept))
        swept = {name: float(value) for name, value in swept.items()}
        hooks.q_values(swept)
        hooks.check({f"swept Q-value {k[2:]}": swept[k] for k in ("q_min", "q_max")},
                    {"learning_rate": self._learning_rate})
        state = state.replace(train=train, to_refresh=counter(self.refresh_every), window_start=counter(start),
                              window_rows=counter(rows), refreshes=counter(state.refreshes + 1))
        return state, memory, {"swept": swept}

    def report(self, state: SweepDqnState, figures, *, played_states: int, states: int, cycle: int):
        state, report = super().report(state, figures, played_states=played_states, states=states, cycle=cycle)
        report.metrics["cycle/refreshes"] = float(state.refreshes)
        if figures is not None:  # the cycle's last refresh
            report.metrics.update({f"targets/{name}": value for name, value in figures["swept"].items()})
        return state, report

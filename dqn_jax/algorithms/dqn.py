"""DQN and Double DQN beside the tutorial's method (``algorithm=dqn``, ``algorithm=double_dqn``).

The Nature DQN (Mnih et al. 2015) and Double DQN (van Hasselt et al. 2016) share the
games, state encodings, networks, acting step, memory storage, checkpoints, tracking
and test mode with the tutorial's method. What is theirs:

* the replay memory is circular (``ReplayMemory.circular``) and kept across updates; a
  transition is a row of one game and the row ``n_step`` later of the same game;
* after ``warmup`` states, one gradient step every ``train_every`` states on a uniform
  batch (or one drawn by priority, ``algorithm.priority_exponent``): the Huber (or
  squared) loss of Q(s, a) against the n-step return plus discount^n * V(s'), V from a
  target network (Double DQN: the action of the online network, the value of the target
  network);
* the target network is a copy of the network taken every ``target_copy_states`` states
  (as DeepMind's code, DQN Zoo and Dopamine count the period: in agent steps).

:func:`sample_transitions` and :func:`td_targets` are pure; :class:`Update` jits one
gradient step (sample, targets, loss, optimiser, target copy) once. :class:`Dqn` is the
algorithm (:mod:`dqn_jax.algorithms.base`): it learns while it plays, and a cycle of
``report_every`` states is what it reports and the training loop checkpoints. The
memory is not in the checkpoint (GBs for each): a resumed run fills it again and warms
up before its next step, unless ``checkpoint.memory=true`` saved it beside the checkpoint.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dqn_jax.algorithms.base import Algorithm, Hooks, MemorySpec, Report, counter
from dqn_jax.algorithms.learners import ActingCopies, Learners
from dqn_jax.core import priorities, replay
from dqn_jax.core.training import TrainState, set_learning_rate


@flax.struct.dataclass
class TargetTrainState(TrainState):
    target_params: dict  # the target network's variables: a copy of params, refreshed every C steps


def with_target(state: TrainState) -> TargetTrainState:
    """``state`` with a target network equal to its network (a copy, not shared buffers)."""
    return TargetTrainState(params=state.params, opt_state=state.opt_state, updates=state.updates,
                            target_params=jax.tree_util.tree_map(jnp.copy, state.params))


class Transitions(NamedTuple):
    states: jax.Array  # (B, ...) the state a decision was taken in
    actions: jax.Array  # int32 (B,)
    rewards: jax.Array  # float32 (B,), clipped; n-step: their discounted sum up to a terminal
    terminal: jax.Array  # bool (B,): a life or the episode ended (no value after it)
    next_states: jax.Array  # (B, ...) the same game's state n steps later


def sample_transitions(key, memory: replay.ReplayMemory, batch_size: int, n_step: int = 1,
                       discount: float = 1.0) -> Transitions:
    """A uniform batch (with replacement, as the paper) of the memory's complete n-step transitions.

    A transition at row p of a game is its state and action there, the discounted sum of
    the rewards of rows p .. p+n-1 cut at the first terminal (a lost life or the episode's
    end: nothing after it counts), and the state of row p+n. It is complete when rows
    p .. p+n-1 are closed and row p+n still holds its state: p+n <= count, where ``count``
    rows are closed and row ``count`` holds the states just decided on, and p > count - rows
    (the row before the oldest was overwritten by them; a memory of frames: p - stack + 1 >
    count - rows). Needs ``count`` >= ``n_step``.
    ``terminal`` is true when the sum was cut: the target then takes no value after it.
    """
    back_key, game_key = jax.random.split(key)
    position = memory.count - n_step - jax.random.randint(back_key, (batch_size,), 0, _complete(memory, n_step))
    game = jax.random.randint(game_key, (batch_size,), 0, memory.num_games)
    return gather_transitions(memory, position, game, n_step, discount)


def sample_prioritised(key, memory: replay.ReplayMemory, batch_size: int, n_step: int, discount: float,
                       exponent: float, importance_exponent: float):
    """A batch of the complete transitions drawn by priority (:mod:`dqn_jax.core.priorities`):
    returns (transitions, their (row, game) in the memory, their importance weights)."""
    back = (memory.count - n_step - jnp.arange(memory.rows)) % memory.rows  # rows back from the newest
    valid = jnp.broadcast_to((back < _complete(memory, n_step))[:, None], memory.errors.shape)
    index, probability = priorities.draw(key, priorities.priorities(memory.errors, valid, exponent), batch_size)
    row, game = jnp.divmod(index, memory.num_games)
    position = memory.count - n_step - back[row]
    weights = priorities.importance_weights(probability, importance_exponent)
    return gather_transitions(memory, position, game, n_step, discount), (row, game), weights


def _complete(memory: replay.ReplayMemory, n_step: int):
    """How many positions back from the newest (count - n_step) hold complete transitions (a
    memory of frames also needs the stack - 1 frames before a transition's state)."""
    return jnp.minimum(memory.count, memory.rows - memory.stack) - (n_step - 1)


def gather_transitions(memory: replay.ReplayMemory, position, game, n_step: int, discount: float) -> Transitions:
    """The n-step transitions at ``position`` (as ``count`` counts rows) of ``game``."""
    batch_size = position.shape[0]
    rewards, alive = jnp.zeros(batch_size, jnp.float32), jnp.ones(batch_size, bool)
    for k in range(n_step):  # n is small and static: unrolled
        row = (position + k) % memory.rows
        rewards = rewards + jnp.where(alive, discount ** k * memory.rewards[row, game], 0.0)
        alive = alive & ~(memory.end_life[row, game] | memory.end_episode[row, game])
    row = position % memory.rows
    return Transitions(replay.states_at(memory, position, game), memory.actions[row, game], rewards, ~alive,
                       replay.states_at(memory, position + n_step, game))


def td_targets(rewards, terminal, next_q_target, next_q_online, discount, double: bool) -> jax.Array:
    """r + discount * V(s'), 0 after a terminal: V = max_a Q_target(s', a) (DQN), or
    Q_target(s', argmax_a Q_online(s', a)) (Double DQN)."""
    if double:
        best = jnp.argmax(next_q_online, axis=-1)
        next_value = jnp.take_along_axis(next_q_target, best[:, None], axis=-1)[:, 0]
    else:
        next_value = jnp.max(next_q_target, axis=-1)
    return rewards + discount * jnp.where(terminal, 0.0, next_value)


def huber_td_loss(q, actions, targets, delta: float | None, weights=None) -> tuple[jax.Array, jax.Array]:
    """The mean Huber loss of Q(s, a) against ``targets`` (0.5 e^2 within ``delta``, the
    paper's error clipping; ``delta`` None: the squared error (target - Q)^2 everywhere, as
    Dopamine's JAX DQN and CleanRL take it, with no 1/2: under Adam the 1/2 would act as a
    doubled ``eps``), each term times its importance weight where ``weights`` are given;
    returns (loss, Q(s, a))."""
    taken = jnp.take_along_axis(q, actions[:, None], axis=-1)[:, 0]
    if delta is None:
        terms = jnp.square(targets - taken)
    else:
        terms = optax.huber_loss(taken, targets, delta=delta)
    return jnp.mean(terms if weights is None else weights * terms), taken


class Stats(NamedTuple):
    """Sums over a cycle's gradient steps, kept on the device (no host sync per step)."""

    loss: jax.Array
    q: jax.Array  # sum of the batch means of Q(s, a)
    q_min: jax.Array
    q_max: jax.Array
    count: jax.Array  # gradient steps summed

    @classmethod
    def zeros(cls) -> Stats:
        f32 = jnp.float32
        return cls(jnp.zeros((), f32), jnp.zeros((), f32), jnp.full((), jnp.inf, f32),
                   jnp.full((), -jnp.inf, f32), jnp.zeros((), jnp.int32))

    def add(self, loss, taken) -> Stats:
        """The sums with one more gradient step: its loss and the batch's Q(s, a)."""
        return Stats(self.loss + loss, self.q + jnp.mean(taken), jnp.minimum(self.q_min, jnp.min(taken)),
                     jnp.maximum(self.q_max, jnp.max(taken)), self.count + 1)


def descend(network, optimizer, state: TrainState, states, actions, targets, learning_rate,
            huber_delta: float | None, axis: str | None = None, weights=None):
    """One optimiser step on the loss of Q(states, actions) against ``targets`` (traced
    inside a jitted step); returns (params, opt_state, loss, Q(s, a)). ``axis``: the batch
    is split over the learners of this named axis, and each steps with the whole batch's
    mean gradient. ``weights``: the importance weights of a prioritised batch."""

    def loss_fn(params):
        return huber_td_loss(network.apply(params, states), actions, jax.lax.stop_gradient(targets), huber_delta,
                             weights)

    (loss, taken), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if axis is not None:
        grads, loss = jax.lax.pmean((grads, loss), axis)
        taken = jax.lax.all_gather(taken, axis, tiled=True)
    opt_state = set_learning_rate(state.opt_state, learning_rate)
    updates, opt_state = optimizer.update(grads, opt_state, state.params)
    return optax.apply_updates(state.params, updates), opt_state, loss, taken


class Update:
    """One DQN gradient step, jitted once; ``train_state`` and ``stats`` are donated.

    ``learners`` > 0 (:mod:`dqn_jax.algorithms.learners`): the batch is drawn on the
    memory's device and split over that many devices of the learners' own, which hold the
    train state; otherwise the whole step is one call on the memory's device.
    ``priority_exponent`` > 0: the batch is drawn by priority (:func:`sample_prioritised`),
    its loss terms weighted by ``importance_exponent``, and the step writes the errors it
    measured into the memory's stored errors (donated); 0 draws uniformly.
    """

    def __init__(self, network, optimizer, *, batch_size: int, discount: float, huber_delta: float | None,
                 double: bool, target_copy_every: int, n_step: int = 1, learners: int = 0,
                 priority_exponent: float = 0.0, importance_exponent: float = 0.5):
        """``target_copy_every`` counts gradient steps (:class:`Dqn` converts the config's states)."""
        self.network, self.optimizer, self.batch_size = network, optimizer, int(batch_size)
        self.discount, self.double = float(discount), bool(double)
        self.huber_delta = None if huber_delta is None else float(huber_delta)
        self.target_copy_every, self.n_step = int(target_copy_every), int(n_step)
        self.priority_exponent, self.importance_exponent = float(priority_exponent), float(importance_exponent)
        self.learners = Learners(int(learners), self._learn) if learners else None
        self._jit = jax.jit(self._step, donate_argnums=(0, 1))
        self._jit_prioritised = jax.jit(self._prioritised_step, donate_argnums=(0, 1, 3))
        self._sample = jax.jit(self._sample_batch)

    def __call__(self, train_state: TargetTrainState, stats: Stats, memory, key, learning_rate):
        """Returns (train_state, stats, memory, key)."""
        if self.priority_exponent > 0:  # the errors travel apart, donated, the rest of the memory is only read
            train_state, stats, errors, key = self._jit_prioritised(
                train_state, stats, memory.replace(errors=None), memory.errors, key, learning_rate)
            return train_state, stats, memory.replace(errors=errors), key
        if self.learners is None:
            train_state, stats, key = self._jit(train_state, stats, memory, key, learning_rate)
            return train_state, stats, memory, key
        key, batch = self._sample(key, memory)
        return (*self.learners.step(train_state, stats, batch, learning_rate), memory, key)

    def _sample_batch(self, key, memory) -> tuple:
        key, pick = jax.random.split(key)
        return key, sample_transitions(pick, memory, self.batch_size, self.n_step, self.discount)

    def _step(self, state: TargetTrainState, stats: Stats, memory, key, learning_rate):
        key, batch = self._sample_batch(key, memory)
        return (*self._learn(state, stats, batch, learning_rate), key)

    def _prioritised_step(self, state: TargetTrainState, stats: Stats, memory, errors, key, learning_rate):
        key, pick = jax.random.split(key)
        batch, (row, game), weights = sample_prioritised(pick, memory.replace(errors=errors), self.batch_size,
                                                         self.n_step, self.discount, self.priority_exponent,
                                                         self.importance_exponent)
        state, stats, measured = self._descend(state, stats, batch, learning_rate, weights=weights)
        return state, stats, errors.at[row, game].set(measured), key

    def _learn(self, state: TargetTrainState, stats: Stats, batch: Transitions, learning_rate, axis=None):
        """The step on a drawn batch (``axis``: a learner's share of it): returns (state, stats)."""
        return self._descend(state, stats, batch, learning_rate, axis)[:2]

    def _descend(self, state: TargetTrainState, stats: Stats, batch: Transitions, learning_rate, axis=None,
                 weights=None):
        """Returns (state, stats, the batch's errors |target - Q(s, a)| before the step; None
        for a learner's share)."""
        apply = self.network.apply
        next_online = apply(state.params, batch.next_states) if self.double else None
        targets = td_targets(batch.rewards, batch.terminal, apply(state.target_params, batch.next_states),
                             next_online, self.discount ** self.n_step, self.double)
        params, opt_state, loss, taken = descend(self.network, self.optimizer, state, batch.states, batch.actions,
                                                 targets, learning_rate, self.huber_delta, axis, weights)
        count = state.updates + 1
        target = jax.lax.cond(count % self.target_copy_every == 0, lambda: params, lambda: state.target_params)
        errors = jnp.abs(targets - taken) if axis is None else None  # with learners, taken is the whole batch's
        return TargetTrainState(params, opt_state, count, target), stats.add(loss, taken), errors


@flax.struct.dataclass
class DqnState:
    """All DQN carries between steps; the checkpoint holds it whole."""

    train: TargetTrainState
    stats: Stats  # the cycle's gradient steps so far (reset when the cycle is reported)
    recorded: np.ndarray  # int32: states in the memory since it was emptied
    credit: np.ndarray  # int32: states recorded after the warm-up and not yet trained on


class Dqn(Algorithm):
    """DQN or Double DQN: a gradient step every ``train_every`` states after ``warmup``."""

    extra_network_copies = 1  # the target network

    def __init__(self, update: Update, memory: MemorySpec, signals, *, warmup: int, train_every: int,
                 report_every: int, n_step: int = 1):
        self.update, self.memory, self.signals, self.n_step = update, memory, signals, int(n_step)
        self.warmup, self.train_every, self.report_every = int(warmup), int(train_every), int(report_every)
        self.copies = ActingCopies() if update.learners else None  # the games' network, a step old
        self._learning_rate = None  # the cycle's, fixed when it starts (a float, and on the device)
        self._learning_rate_array = None

    @classmethod
    def from_config(cls, cfg, parts, memory: MemorySpec, signals) -> Dqn:
        algo = cfg.algorithm
        update = Update(parts.network, parts.optimizer, batch_size=cfg.memory.batch_size,
                        discount=algo.discount, huber_delta=algo.huber_delta, double=algo.name == "double_dqn",
                        target_copy_every=algo.target_copy_states // algo.train_every, n_step=algo.n_step,
                        learners=algo.learner_devices, priority_exponent=algo.priority_exponent,
                        importance_exponent=algo.importance_exponent)
        return cls(update, memory, signals, warmup=algo.warmup, train_every=algo.train_every,
                   report_every=algo.report_every, n_step=algo.n_step)

    def init(self, train_state: TrainState) -> DqnState:
        return DqnState(with_target(train_state), Stats.zeros(), counter(0), counter(0))

    def empty_memory(self, state: DqnState):
        spec = self.memory
        memory = replay.init_memory(spec.rows, spec.games, spec.shape, spec.dtype, spec.num_actions, circular=True,
                                    stack=spec.stack)
        return state.replace(recorded=counter(0)), memory

    def cycle_rows(self, state: DqnState, states: int) -> int:
        self._learning_rate = self.signals.values(states)["learning_rate"]
        self._learning_rate_array = jnp.float32(self._learning_rate)
        return math.ceil(self.report_every / self.memory.games)

    def recorded(self, state: DqnState, games: int) -> DqnState:
        recorded = int(state.recorded) + games
        held = recorded > max(self.warmup, games * self.n_step)  # a complete transition is held
        return state.replace(recorded=counter(recorded), credit=counter(state.credit + games) if held else state.credit)

    def ready(self, state: DqnState, cycle_over: bool) -> bool:
        return bool(state.credit >= self.train_every)

    def learn(self, state: DqnState, memory, key, states: int, hooks: Hooks):
        """One gradient step (on the device; nothing is read back)."""
        train, stats, memory, key = self.update(state.train, state.stats, memory, key, self._learning_rate_array)
        if self.copies is not None:
            self.copies.stepped(train)
        return state.replace(train=train, stats=stats, credit=counter(state.credit - self.train_every)), memory, key, None

    def train_state(self, state: DqnState) -> TargetTrainState:
        """The train state, on the games' device (with learners its home is theirs)."""
        return state.train if self.copies is None else jax.device_put(state.train, self.copies.device)

    def acting_params(self, state: DqnState):
        return state.train.params if self.copies is None else self.copies.params(state.train)

    def report(self, state: DqnState, figures, *, played_states: int, states: int, cycle: int):
        stats = jax.device_get(state.stats)
        count = int(stats.count)
        metrics = {"cycle/iterations": float(count), "cycle/learning_rate": self._learning_rate,
                   "cycle/updates": float(state.train.updates),
                   "memory/states": float(min(int(state.recorded), self.memory.rows * self.memory.games))}
        loss, checks = None, {}  # a cycle of the warm-up took no step: only the network is checked
        if count:
            loss = float(stats.loss) / count
            metrics.update({"cycle/loss": loss, "q/mean": float(stats.q) / count,
                            "q/min": float(stats.q_min), "q/max": float(stats.q_max)})
            checks = {"batch loss": loss, "batch Q-value min": metrics["q/min"], "batch Q-value max": metrics["q/max"]}
        report = Report(metrics, checks, {"learning_rate": self._learning_rate}, loss)
        return state.replace(stats=Stats.zeros()), report

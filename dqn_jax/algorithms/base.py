"""The one interface every algorithm implements, and what the training loop hands it.

The training loop (:mod:`dqn_jax.runner.loop`) owns the games, the acting step, the
counters, the logs and the checkpoints. It asks an algorithm, in this order::

    state = algorithm.init(train_state)              # or the state a checkpoint holds
    state, memory = algorithm.empty_memory(state)    # at the start of a run or a resume
    every cycle:
        rows = algorithm.cycle_rows(state, states)   # steps the cycle plays
        every step, once the acting step has recorded it in the memory:
            state = algorithm.recorded(state, games)
            while algorithm.ready(state, cycle_over=False):  learn
        the last step's outcome is recorded, then
        while algorithm.ready(state, cycle_over=True):  learn
        state, report = algorithm.report(state, figures, ...)  # logged, checked, checkpointed

where learn is ``state, memory, key, figures = algorithm.learn(state, memory, key, states, hooks)``.
DQN learns while it plays (a gradient step every ``train_every`` states); the
tutorial's method learns once a cycle is over (sweep, optimise, empty the memory).

An algorithm's state is one pytree (a ``flax.struct`` dataclass) holding its train
state and every counter it needs between steps; the checkpoint holds it whole. Host
counters are 0-d numpy arrays (:func:`counter`), so that Orbax saves them beside the
arrays and counting them costs no device call. The replay
memory is not in it (gigabytes per checkpoint): a resumed run starts it empty, unless
``checkpoint.memory=true`` saved it beside the checkpoint (:mod:`dqn_jax.runner.memory_file`);
then the state is kept as the checkpoint holds it and ``empty_memory`` is not called.

Adding an algorithm: a module (or folder) here with a subclass of :class:`Algorithm`
and a typed config, registered in :mod:`dqn_jax.algorithms`, and a YAML file in
``conf/algorithm/``; ``docs/algorithms.md`` walks through DQN as the example.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from dqn_jax.core.replay import ReplayMemory


def counter(value) -> np.ndarray:
    """A host counter in an algorithm's state: a 0-d int32 numpy array."""
    return np.asarray(value, np.int32)


class MemorySpec(NamedTuple):
    """The replay memory's geometry: rows of ``games`` games, each state ``shape``/``dtype``;
    ``stack`` > 1: only each state's newest frame is kept (``core.replay.states_at``)."""

    rows: int
    games: int
    shape: tuple[int, ...]
    dtype: Any
    num_actions: int
    stack: int = 1


class Hooks(NamedTuple):
    """What the training loop lends a learning step."""

    stop: Callable[[], bool]  # a stop was asked for: end at the next safe point
    check: Callable[..., None]  # check(values, signals, params=None): raises on divergence
    progress: Callable[[], tuple[Callable[[int, int, float], None], Callable[[], None]]]  # a bar: (update, close)
    q_values: Callable[[dict[str, float]], None]  # a row of q_values.csv: Q statistics of the memory


class Report(NamedTuple):
    """A cycle's figures, as the training loop logs and checks them."""

    metrics: dict[str, float]  # by their MLflow names (cycle/*, q/*, ...)
    checks: dict[str, float]  # the values that must stay finite and bounded (faults.Limits)
    signals: dict[str, float]  # the control signals the algorithm used, shown with a divergence
    loss: float | None  # the cycle's mean batch loss (None: no gradient step yet)


class Algorithm(ABC):
    """An algorithm: its state, when it learns, how it learns, what a cycle reports."""

    #: The control signals it reads (the others are not logged as its params).
    signal_names: tuple[str, ...] = ("epsilon", "learning_rate")
    #: Network copies the algorithm keeps beside the online one (a target network: 1).
    extra_network_copies: int = 0

    @classmethod
    @abstractmethod
    def from_config(cls, cfg, parts, memory: MemorySpec, signals) -> Algorithm:
        """The algorithm from plain values of the config, around ``parts``
        (:class:`dqn_jax.algorithms.Parts`: network, optimiser, fresh train state)."""

    @abstractmethod
    def init(self, train_state) -> Any:
        """The state of a fresh run, around a freshly initialised train state."""

    @abstractmethod
    def empty_memory(self, state) -> tuple[Any, ReplayMemory]:
        """An empty replay memory, and the state with what it counted of the old one reset."""

    @abstractmethod
    def cycle_rows(self, state, states: int) -> int:
        """Steps (rows of all games) the next cycle plays, ``states`` played so far."""

    def recorded(self, state, games: int):
        """The state once a step of ``games`` games is in the memory (default: unchanged)."""
        return state

    @abstractmethod
    def ready(self, state, cycle_over: bool) -> bool:
        """Whether a learning step is due now (``cycle_over``: the cycle's steps are played)."""

    @abstractmethod
    def learn(self, state, memory: ReplayMemory, key, states: int, hooks: Hooks) -> tuple:
        """One learning step: returns (state, memory, key, figures for :meth:`report` or None)."""

    @abstractmethod
    def report(self, state, figures, *, played_states: int, states: int, cycle: int) -> tuple[Any, Report | None]:
        """The cycle's report (None: nothing to report, e.g. a cycle cut short before learning),
        and the state with the cycle's running statistics reset."""

    @staticmethod
    def train_state(state):
        """The network's train state inside ``state`` (for acting and testing)."""
        return state.train

    def acting_params(self, state):
        """The network's variables the games are played with while training (default: the
        train state's own)."""
        return self.train_state(state).params

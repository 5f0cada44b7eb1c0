"""The tutorial's method (``algorithm=hvass``, the default) as an :class:`~dqn_jax.algorithms.base.Algorithm`.

Play until the replay memory is full enough (the replay-fraction signal); then, the
cycle over, one learning step: the backward sweep recomputes every Q-target
(:func:`targets.recompute_targets`), the learner optimises on error-split batches in
epochs until the loss limit (:class:`optimise.Learner`), and the memory is emptied.
"""

from __future__ import annotations

import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from dqn_jax.algorithms.base import Algorithm, Hooks, MemorySpec, Report, counter
from dqn_jax.algorithms.hvass.optimise import Learner
from dqn_jax.algorithms.hvass.targets import recompute_targets, resolve_target_method
from dqn_jax.core import replay
from dqn_jax.core.schedules import SIGNAL_NAMES
from dqn_jax.core.training import TrainState


def rows_before_learning(replay_fraction, count_states: int, memory_rows: int, games: int) -> int:
    """Rows to record before the next learning cycle: the memory is full, or its used
    fraction exceeds the replay-fraction signal at the count reached by then.

    Evaluating the signal for every fill level once per cycle gives the same answer
    as the tutorial's check after every state, without a device call per step.
    """
    rows = np.arange(1, memory_rows + 1)
    fraction = np.asarray(replay_fraction(jnp.asarray(count_states + rows * games, jnp.float32)))
    over = np.flatnonzero(rows / memory_rows > fraction)
    return int(rows[over[0]]) if over.size else memory_rows


@flax.struct.dataclass
class HvassState:
    """All the tutorial's method carries between steps; the checkpoint holds it whole."""

    train: TrainState
    rows: np.ndarray  # int32: rows recorded since the memory was emptied


class Hvass(Algorithm):
    """Fill the memory, sweep, optimise, empty it: the tutorial's flow chart."""

    signal_names = SIGNAL_NAMES  # all five

    def __init__(self, learner: Learner, memory: MemorySpec, signals, *, discount: float, target_method: str,
                 min_epochs: float):
        self.learner, self.memory, self.signals = learner, memory, signals
        self.discount, self.target_method = discount, resolve_target_method(target_method)
        self.min_epochs = min_epochs

    @classmethod
    def from_config(cls, cfg, parts, memory: MemorySpec, signals) -> Hvass:
        algo = cfg.algorithm
        learner = Learner(parts.network, parts.optimizer, batch_size=cfg.memory.batch_size,
                          error_threshold=algo.error_threshold, min_high_share=algo.min_high_error_share,
                          loss_window=algo.loss_window)
        return cls(learner, memory, signals, discount=algo.discount, target_method=algo.target_method,
                   min_epochs=algo.min_epochs)

    def init(self, train_state: TrainState) -> HvassState:
        return HvassState(train_state, counter(0))

    def empty_memory(self, state: HvassState):
        spec = self.memory
        return state.replace(rows=counter(0)), replay.init_memory(spec.rows, spec.games, spec.shape, spec.dtype,
                                                                   spec.num_actions)

    def cycle_rows(self, state: HvassState, states: int) -> int:
        return rows_before_learning(self.signals.replay_fraction, states, self.memory.rows, self.memory.games)

    def recorded(self, state: HvassState, games: int) -> HvassState:
        return state.replace(rows=counter(state.rows + 1))

    def ready(self, state: HvassState, cycle_over: bool) -> bool:
        return cycle_over and bool(state.rows > 0)

    def learn(self, state: HvassState, memory, key, states: int, hooks: Hooks):
        """Backward sweep, optimise; the memory comes back emptied."""
        values = self.signals.values(states)
        start = time.perf_counter()
        memory, swept = recompute_targets(memory, self.discount, self.target_method)
        swept = {k: float(v) for k, v in jax.device_get(swept).items()}
        targets_seconds = time.perf_counter() - start
        hooks.q_values(swept)
        hooks.check({f"swept Q-value {k[2:]}": swept[k] for k in ("q_min", "q_max")}, values)
        progress, done = hooks.progress()
        start = time.perf_counter()
        train, key, result = self.learner.optimise(
            state.train, memory, key, learning_rate=values["learning_rate"], loss_limit=values["loss_limit"],
            max_epochs=values["max_epochs"], min_epochs=self.min_epochs, progress=progress, stop=hooks.stop)
        done()
        figures = {"result": result, "values": values, "swept": swept,
                   "seconds": {"targets": targets_seconds, "optimise": time.perf_counter() - start}}
        return state.replace(train=train, rows=counter(0)), replay.reset(memory), key, figures

    def report(self, state: HvassState, figures, *, played_states: int, states: int, cycle: int):
        if figures is None:  # the cycle was cut short before the memory was ready
            return state, None
        result, values, swept = figures["result"], figures["values"], figures["swept"]
        loss = float(result.mean_loss)
        metrics = {
            "cycle/loss": loss,
            "cycle/iterations": float(result.iterations),
            "cycle/epochs": float(result.epochs),
            "cycle/high_error_share": float(result.high_error_share),
            **{f"cycle/{name}": value for name, value in values.items() if name != "epsilon"},
            **{f"cycle/{stage}_seconds": value for stage, value in figures["seconds"].items()},
            **{f"q/{name[2:]}" if name.startswith("q_") else f"targets/{name}": value
               for name, value in swept.items()},
        }
        return state, Report(metrics, {"batch loss": loss}, values, loss)

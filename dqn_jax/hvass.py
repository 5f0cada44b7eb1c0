"""The tutorial's learning cycle (``algorithm=hvass``, the default).

Play until the replay memory is full enough (the replay-fraction signal), then one
learning cycle: the backward sweep recomputes every Q-target
(:func:`memory.recompute_targets`), the learner optimises on error-split batches in
epochs until the loss limit (:class:`learner.Learner`), and the memory is emptied.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from dqn_jax import memory as replay
from dqn_jax.agent import Acting, Counters, Cycle, Played, step_games
from dqn_jax.faults import check_cycle


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


class TutorialCycle(Cycle):
    """Fill the memory, sweep, optimise, empty it: the tutorial's flow chart."""

    def __init__(self, *parts, learner, memory_rows: int, state: tuple, discount: float,
                 target_method: str, reward_clip: float, min_epochs: float):
        super().__init__(*parts)
        self.learner, self.rows, self.state = learner, memory_rows, state
        self.discount, self.target_method = discount, replay.resolve_target_method(target_method)
        self.reward_clip, self.min_epochs = reward_clip, min_epochs

    def empty_memory(self) -> replay.ReplayMemory:
        return replay.init_memory(self.rows, self.games.num_envs, *self.state, self.games.num_actions)

    def play(self, memory, acting: Acting, train_state, key, counters: Counters, stop_request):
        """Play and record until the memory is ready to learn from (see :class:`agent.Cycle`)."""
        num_games = self.games.num_envs
        rows = rows_before_learning(self.signals.replay_fraction, counters.states, self.rows, num_games)
        bar = self.log.playing(counters.cycles + 1, rows * num_games)
        start, outcome = time.perf_counter(), None  # outcome: the last step's, not yet in the memory
        for _ in range(rows):
            if not self.budget.left(counters):
                bar.close()
                return memory, acting, train_state, key, None
            stop_request.check()  # a Ctrl-C that Python dropped or that came while saving
            memory, key, tracer, actions, epsilon = self.player.play(
                train_state.params, memory, acting.tracer, acting.frames, acting.restart, key, counters.states,
                outcome and outcome.memory_row())
            acting, outcome = step_games(self.games, acting, actions, tracer)
            counters.states += num_games
            self.record_episodes(outcome, counters, epsilon)
            bar.update(num_games)
        bar.close()
        memory = replay.record_outcome_jit(memory, *outcome.memory_row(), self.reward_clip)
        return memory, acting, train_state, key, Played(rows * num_games, time.perf_counter() - start)

    def learn(self, memory, train_state, key, counters: Counters, played: Played, stop=None):
        """Backward sweep, optimise, log; the memory comes back emptied."""
        cycle, values = counters.cycles + 1, self.signals.values(counters.states)
        targets_start = time.perf_counter()
        memory, swept = replay.recompute_targets(memory, self.discount, self.target_method)
        swept = {k: float(v) for k, v in jax.device_get(swept).items()}
        targets_seconds = time.perf_counter() - targets_start
        self.log.targets(counters.episodes, counters.states, swept)
        check_cycle(cycle=cycle, limits=self.limits, states=counters.states, signals=values,
                    values={f"swept Q-value {k[2:]}": swept[k] for k in ("q_min", "q_max")})
        progress, done = self.log.optimising(cycle)
        learn_start = time.perf_counter()
        train_state, key, result = self.learner.optimise(
            train_state, memory, key, learning_rate=values["learning_rate"],
            loss_limit=values["loss_limit"], max_epochs=values["max_epochs"],
            min_epochs=self.min_epochs, progress=progress, stop=stop)
        done()
        counters.cycles = cycle
        seconds = {"play": played.seconds, "targets": targets_seconds, "optimise": time.perf_counter() - learn_start}
        self.log.cycle(cycle, counters.states, _cycle_metrics(cycle, result, values, swept, played.states, seconds))
        check_cycle(cycle=cycle, limits=self.limits, states=counters.states, signals=values,
                    values={"batch loss": float(result.mean_loss)}, params=train_state.params)
        return replay.reset(memory), train_state, key, float(result.mean_loss)


def _cycle_metrics(cycle: int, result, values: dict, swept: dict, played_states: int,
                   seconds: dict[str, float]) -> dict[str, float]:
    """A learning cycle's metrics, by their MLflow names."""
    return {
        "cycle/loss": float(result.mean_loss),
        "cycle/iterations": float(result.iterations),
        "cycle/epochs": float(result.epochs),
        "cycle/high_error_share": float(result.high_error_share),
        **{f"cycle/{name}": value for name, value in values.items() if name != "epsilon"},
        "cycle/states_per_second": played_states / max(seconds["play"], 1e-9),
        **{f"cycle/{stage}_seconds": value for stage, value in seconds.items()},
        "cycle/count": float(cycle),
        **{f"q/{name[2:]}" if name.startswith("q_") else f"targets/{name}": value
           for name, value in swept.items()},
    }

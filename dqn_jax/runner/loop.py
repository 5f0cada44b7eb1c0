"""The training loop: the one acting loop, played in cycles, with any algorithm.

:func:`train` is the flow chart every algorithm follows (:mod:`dqn_jax.algorithms.base`):
a cycle plays the steps the algorithm asks for (acting and recording into the replay
memory in one jitted call, then stepping the games), learning whenever the algorithm
is ready; the cycle's report is logged and checked, and a checkpoint holds the
algorithm's state. Ctrl-C or a stop signal ends the run at a safe point (the next
step while playing, the next batch while optimising), and the state is saved first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import jax
import numpy as np

from dqn_jax.algorithms.base import Algorithm, Hooks, Report
from dqn_jax.core import replay
from dqn_jax.core.acting import Player
from dqn_jax.runner.faults import Limits, check_cycle
from dqn_jax.runner.games import Acting, Outcome, step_games
from dqn_jax.runner.interrupts import stop_request as current_stop_request
from dqn_jax.runner.logs import TrainingLog
from dqn_jax.runner.memory_file import MemoryFile


@dataclass
class Counters:
    """What a checkpoint carries besides the algorithm's state: training resumes from here."""

    states: int = 0
    episodes: int = 0
    cycles: int = 0


@dataclass(frozen=True)
class Budget:
    """When training stops: after ``states`` states or ``episodes`` episodes in all (None: no limit)."""

    states: int | None = None
    episodes: int | None = None

    def left(self, counters: Counters) -> bool:
        return not ((self.states is not None and counters.states >= self.states)
                    or (self.episodes is not None and counters.episodes >= self.episodes))


@dataclass
class TrainResult:
    counters: Counters
    stopped_by: str
    last_mean30: float
    last_loss: float | None


@dataclass
class Training:
    """What the application hands the training loop."""

    algorithm: Algorithm
    games: object
    player: Player
    checkpointer: object
    log: TrainingLog
    budget: Budget
    reward_clip: float
    limits: Limits | None = None  # how far a finite run may go (None: finiteness alone)
    after_cycle: Callable[[], None] = lambda: None  # e.g. redraw the training curves now and then
    memory_file: MemoryFile | None = None  # the replay memory saved with each checkpoint (None: not saved)

    def save(self, counters: Counters, state, key, memory) -> None:
        """Checkpoint at ``counters.states``, what was logged so far made durable first: a
        crash after the checkpoint then loses none of what it covers (:mod:`dqn_jax.runner.resume`)."""
        self.log.tracker.persist()
        self.checkpointer.save(counters.states, state, key, asdict(counters))
        if self.memory_file is not None:
            self.memory_file.save(counters.states, memory)

    def start_memory(self, state, counters: Counters) -> tuple:
        """(state, memory): the memory saved with the checkpoint the run resumed from, else an
        empty one (and the state with what it counted of the old one reset)."""
        emptied = lambda: self.algorithm.empty_memory(state)  # noqa: E731
        if self.memory_file is None or not counters.states:
            return emptied()
        memory = self.memory_file.load(counters.states, jax.eval_shape(lambda: emptied()[1]))
        if memory is None:
            print(f"no replay memory was saved at {counters.states} states: it starts empty", flush=True)
            return emptied()
        print(f"the replay memory saved at {counters.states} states is back: "
              f"{min(int(memory.count), memory.rows) * memory.num_games} states", flush=True)
        return state, memory


def train(run: Training, *, state, key, counters: Counters, seed: int) -> tuple:
    """Play cycles until the budget is spent; returns (state, key, TrainResult)."""
    state, memory = run.start_memory(state, counters)
    acting = Acting.start(run.games, run.player, seed + counters.episodes)
    stopped_by, last_loss, saved_at = "budget", None, counters.states
    with current_stop_request() as stop_request:
        try:
            while run.budget.left(counters) and not stop_request.requested:
                with stop_request.deferred():  # acting and learning donate the memory and the state
                    state, memory, acting, key, report = _cycle(run, state, memory, acting, key, counters,
                                                                stop_request)
                    if report is None:
                        break  # the budget ran out (or a stop came) before the cycle could learn
                    last_loss = last_loss if report.loss is None else report.loss
                    run.save(counters, state, key, memory)
                    saved_at = counters.states
                run.after_cycle()
        except KeyboardInterrupt:
            stop_request.requested = True
        finally:
            run.log.close()
        if stop_request.requested:
            stopped_by = "interrupt"
            run.log.say("interrupted: saving a checkpoint and closing the run")
        with stop_request.deferred():
            if counters.states > saved_at:
                run.save(counters, state, key, memory)
            run.checkpointer.wait()
    return state, key, TrainResult(counters, stopped_by, run.log.window.mean, last_loss)


def _cycle(run: Training, state, memory, acting: Acting, key, counters: Counters, stop_request):
    """One cycle: play the steps the algorithm asks for, learning whenever it is ready, then
    report. Returns (state, memory, acting, key, Report or None when nothing was reported)."""
    algorithm, num_games = run.algorithm, run.games.num_envs
    rows = algorithm.cycle_rows(state, counters.states)
    start_states, start = counters.states, time.perf_counter()
    hooks = _hooks(run, counters, stop_request)
    bar, outcome, played_rows, figures = run.log.playing(counters.cycles + 1, rows * num_games), None, 0, None
    while played_rows < rows and run.budget.left(counters) and not stop_request.requested:
        memory, key, tracer, actions, epsilon = run.player.play(
            algorithm.acting_params(state), memory, acting.tracer, acting.frames, acting.restart, key,
            counters.states, outcome and outcome.memory_row())
        acting, outcome = step_games(run.games, acting, actions, tracer)
        counters.states += num_games
        played_rows += 1
        state = algorithm.recorded(state, num_games)
        while algorithm.ready(state, cycle_over=False):
            state, memory, key, figures = _learn(algorithm, state, memory, key, counters, hooks, figures)
        _record_episodes(run.log, outcome, counters, epsilon)
        bar.update(num_games)
    bar.close()
    if outcome is None:
        return state, memory, acting, key, None
    seconds = time.perf_counter() - start
    memory = replay.record_outcome_jit(memory, *outcome.memory_row(), run.reward_clip)
    while algorithm.ready(state, cycle_over=played_rows == rows):
        state, memory, key, figures = _learn(algorithm, state, memory, key, counters, hooks, figures)
    played = counters.states - start_states
    state, report = algorithm.report(state, figures, played_states=played, states=counters.states,
                                     cycle=counters.cycles + 1)
    if report is not None:
        _log_cycle(run, state, counters, report, played, seconds)
    return state, memory, acting, key, report


def _learn(algorithm: Algorithm, state, memory, key, counters: Counters, hooks: Hooks, figures):
    state, memory, key, learned = algorithm.learn(state, memory, key, counters.states, hooks)
    return state, memory, key, figures if learned is None else learned


def _hooks(run: Training, counters: Counters, stop_request) -> Hooks:
    def check(values: dict, signals: dict, params=None) -> None:
        check_cycle(cycle=counters.cycles + 1, limits=run.limits, states=counters.states, signals=signals,
                    values=values, params=params)

    return Hooks(stop=lambda: stop_request.requested, check=check,
                 progress=lambda: run.log.optimising(counters.cycles + 1),
                 q_values=lambda stats: run.log.targets(counters.episodes, counters.states, stats))


def _log_cycle(run: Training, state, counters: Counters, report: Report, played: int, seconds: float) -> None:
    """Count, log and check the cycle (:class:`~dqn_jax.runner.faults.Diverged` before its checkpoint)."""
    counters.cycles += 1
    metrics = {**report.metrics, "cycle/states_per_second": played / max(seconds, 1e-9),
               "cycle/play_seconds": seconds, "cycle/count": float(counters.cycles)}
    run.log.cycle(counters.cycles, counters.states, metrics)
    check_cycle(cycle=counters.cycles, limits=run.limits, states=counters.states, signals=report.signals,
                values=report.checks, params=run.algorithm.train_state(state).params)


def _record_episodes(log: TrainingLog, outcome: Outcome, counters: Counters, epsilon) -> None:
    """Count and log the episodes that ended in this step."""
    for game in np.flatnonzero(outcome.ended):
        counters.episodes += 1
        log.episode(counters.episodes, counters.states, float(epsilon), float(outcome.scores[game]))

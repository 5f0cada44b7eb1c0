"""The agent: play N games with the Q-network, learn from the replay memory, test.

``Player`` is the acting step, jitted once: frames in; motion trace, Q-values,
epsilon-greedy actions out, with the PRNG key threaded through it. ``train`` is
the tutorial's flow chart for N games: play and record until the memory is full
enough, then sweep, optimise, checkpoint and empty the memory. ``test`` plays
with the test epsilon and reports the tutorial's statistics.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dqn_jax import logs, pictures
from dqn_jax import memory as replay
from dqn_jax.config import memory_steps
from dqn_jax.faults import check_cycle
from dqn_jax.interrupts import stop_request as current_stop_request
from dqn_jax.motion import init_tracer, trace
from dqn_jax.policy import epsilon_greedy


@dataclass
class Counters:
    """What a checkpoint carries besides the network: training resumes from here."""

    states: int = 0
    episodes: int = 0
    cycles: int = 0


def state_spec(env_cfg, observation_shape, observation_dtype) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of one stored state (frame + motion trace for Atari)."""
    if env_cfg.kind != "atari":
        return tuple(observation_shape), np.dtype(observation_dtype)
    channels = 2 if env_cfg.motion_trace else 1
    return (*observation_shape, channels), np.dtype(np.uint8)


class Player:
    """Acting for N games at once, compiled once; epsilon comes from ``epsilon_fn(count)``.

    ``act`` chooses actions (testing). ``play`` is the training step: it closes the
    previous step's memory row with that step's outcome, chooses the actions and writes
    the decision into the next row, all in one jitted call on the donated memory.
    """

    def __init__(self, network, env_cfg, epsilon_fn, reward_clip: float = 1.0):
        motion = env_cfg.kind == "atari" and env_cfg.motion_trace
        threshold, decay = float(env_cfg.trace_threshold), float(env_cfg.trace_decay)
        self.motion = motion

        def act(params, tracer, frames, restart, key, count):
            if motion:
                tracer, states = trace(tracer, frames, restart, threshold, decay)
            else:
                states = frames[..., None] if frames.ndim == 3 else frames
            q_values = network.apply(params, states)
            key, pick = jax.random.split(key)
            epsilon = epsilon_fn(count)
            actions = epsilon_greedy(pick, q_values, epsilon)
            return key, tracer, states, q_values, actions, epsilon

        def play(params, memory, tracer, frames, restart, key, count, outcome, pending):
            memory = replay.record_outcome(memory, *outcome, reward_clip, pending)
            key, tracer, states, q_values, actions, epsilon = act(params, tracer, frames, restart, key, count)
            memory = replay.record_decision(memory, states, q_values, actions)
            return memory, key, tracer, actions, epsilon

        self._act = jax.jit(act, donate_argnums=(1,))
        self._play = jax.jit(play, donate_argnums=(1, 2))

    def act(self, params, tracer, frames, restart, key, count):
        """Choose actions (testing): returns (key, tracer, states, q_values, actions, epsilon)."""
        return self._act(params, tracer, frames, restart, key, _as_count(count))

    def play(self, params, memory, tracer, frames, restart, key, count, outcome=None):
        """One training step: returns (memory, key, tracer, actions, epsilon).

        ``outcome`` is the previous step's (rewards, end_life, end_episode), or None
        when no memory row is open (the first step after the memory was emptied).
        """
        pending = outcome is not None
        if not pending:
            games = np.shape(frames)[0]
            outcome = (np.zeros(games, np.float32), np.zeros(games, bool), np.zeros(games, bool))
        return self._play(params, memory, tracer, frames, restart, key, _as_count(count), outcome, pending)

    def start(self, frames):
        """The tracer state for the first frames (None without a motion trace).

        The last frame is kept as uint8, as the games give it: the states are exactly
        those of a float32 tracer, for a quarter of the bytes read and written per step.
        """
        if not self.motion:
            return None
        frames = jnp.asarray(frames)
        return init_tracer(frames, jnp.uint8 if frames.dtype == jnp.uint8 else jnp.float32)


def _as_count(states: int) -> np.float32:
    """A state count for the signals inside jitted code: a float, since JAX's int32 would
    overflow past 2**31 states (exact to 2**24, then to within 1 part in 2**24)."""
    return np.float32(states)


def rows_before_learning(replay_fraction, count_states: int, steps: int, games: int) -> int:
    """Rows to record before the next learning cycle: the memory is full, or its used
    fraction exceeds the replay-fraction signal at the count reached by then.

    Evaluating the signal for every fill level once per cycle gives the same answer
    as the tutorial's check after every state, without a device call per step.
    """
    rows = np.arange(1, steps + 1)
    fraction = np.asarray(replay_fraction(jnp.asarray(count_states + rows * games, jnp.float32)))
    over = np.flatnonzero(rows / steps > fraction)
    return int(rows[over[0]]) if over.size else steps


# ----------------------------------------------------------------------------- the games


@dataclass
class Acting:
    """What playing N games carries from one step to the next."""

    frames: np.ndarray  # (N, ...) the frames the next actions are chosen on
    lives: np.ndarray  # (N,) lives left in each game's episode
    restart: np.ndarray  # (N,) bool: the frame starts a new episode (the tracer restarts)
    scores: np.ndarray  # (N,) each game's score in the episode so far
    tracer: object  # the motion tracer's state (None without one)

    @classmethod
    def start(cls, games, player: Player, seed: int) -> Acting:
        frames, lives = games.reset(seed=seed)
        return cls(frames, lives, np.ones(games.num_envs, bool), np.zeros(games.num_envs),
                   player.start(frames))


@dataclass
class Outcome:
    """What one step brought each of the N games."""

    rewards: np.ndarray  # raw (unclipped) rewards
    end_life: np.ndarray  # a life was lost and the episode goes on: a terminal for the sweep
    ended: np.ndarray  # the episode ended (the next frame starts another)
    lives: np.ndarray  # lives left in the episode the step belongs to (0 once it ended)
    scores: np.ndarray  # each game's episode score after this step

    def memory_row(self) -> tuple:
        """What the replay memory records of the step: (rewards, end of life, end of episode)."""
        return self.rewards, self.end_life, self.ended


def step_games(games, acting: Acting, actions, tracer) -> tuple[Acting, Outcome]:
    """Step the N games with ``actions``; ``tracer`` is the tracer after choosing them.

    The games reset an ended episode in the same step, so the returned frame of such a
    game is the first of its next episode (``restart``).
    """
    step = games.step(np.asarray(actions))
    ended = step.ended
    scores = acting.scores + step.rewards
    outcome = Outcome(step.rewards, (step.lives < acting.lives) & ~ended, ended,
                      np.where(ended, 0, step.lives), scores)
    return Acting(step.frames, step.lives, ended, np.where(ended, 0.0, scores), tracer), outcome


# ------------------------------------------------------------------------------ training


@dataclass
class TrainResult:
    counters: Counters
    stopped_by: str
    last_mean30: float
    last_loss: float | None


def train(cfg, *, games, player, learner, signals, train_state, key, counters: Counters,
          checkpointer, tracker, run_dir: Path, reward_history=()) -> tuple:
    """The tutorial's flow chart; returns (train_state, key, TrainResult).

    Play until the memory is ready, then one learning cycle (sweep, optimise,
    checkpoint, empty the memory), until the budget (``steps=``, ``episodes=``) is
    spent. Ctrl-C stops at a safe point: the next step while playing, the next batch
    while optimising, and the run's state is saved first.
    """
    cycle = _Cycle(cfg, games, player, learner, signals, checkpointer,
                   logs.TrainingLog(run_dir, tracker, reward_history, console=cfg.progress))
    memory = cycle.empty_memory()
    acting = Acting.start(games, player, cfg.seed + counters.episodes)
    stopped_by, last_loss, saved_at = "budget", None, counters.states
    with current_stop_request() as stop_request:
        try:
            while cycle.budget_left(counters):
                memory, acting, key, played = cycle.play(memory, acting, train_state.params, key, counters,
                                                         stop_request)
                if played is None:
                    break  # the budget ran out before the memory was ready
                with stop_request.deferred():  # the sweep and optimise donate memory and train state
                    memory, train_state, key, last_loss = cycle.learn(
                        memory, train_state, key, counters, played, stop=lambda: stop_request.requested)
                    cycle.save(counters, train_state, key)
                    saved_at = counters.states
                pictures.log_training_curves(tracker, run_dir, every_seconds=300)
        except KeyboardInterrupt:
            stopped_by = "interrupt"
            cycle.log.say("interrupted: saving a checkpoint and closing the run")
        finally:
            cycle.log.close()
        stopped_by = "interrupt" if stop_request.requested else stopped_by
        with stop_request.deferred():
            if counters.states > saved_at:
                cycle.save(counters, train_state, key)
            checkpointer.wait()
    return train_state, key, TrainResult(counters, stopped_by, cycle.log.window.mean, last_loss)


class _Cycle:
    """The steps of the training loop, over the parts built once by the application."""

    def __init__(self, cfg, games, player, learner, signals, checkpointer, log: logs.TrainingLog):
        self.games, self.player, self.learner, self.signals = games, player, learner, signals
        self.checkpointer, self.log = checkpointer, log
        self.steps = memory_steps(cfg.memory, games.num_envs)
        self.state = state_spec(cfg.env, games.observation_shape, games.observation_dtype)
        self.memory_cfg, self.min_epochs = cfg.memory, cfg.schedule.min_epochs
        self.max_states, self.max_episodes = cfg.steps, cfg.episodes

    def empty_memory(self) -> replay.ReplayMemory:
        return replay.init_memory(self.steps, self.games.num_envs, *self.state, self.games.num_actions)

    def budget_left(self, counters: Counters) -> bool:
        return not ((self.max_states is not None and counters.states >= self.max_states)
                    or (self.max_episodes is not None and counters.episodes >= self.max_episodes))

    def play(self, memory, acting: Acting, params, key, counters: Counters, stop_request):
        """Play and record until the memory is ready to learn from.

        Returns (memory, acting, key, played): ``played`` is (states, seconds), or None
        when the budget ran out first.
        """
        num_games = self.games.num_envs
        rows = rows_before_learning(self.signals.replay_fraction, counters.states, self.steps, num_games)
        bar = self.log.playing(counters.cycles + 1, rows * num_games)
        start, outcome = time.perf_counter(), None  # outcome: the last step's, not yet in the memory
        for _ in range(rows):
            if not self.budget_left(counters):
                bar.close()
                return memory, acting, key, None
            stop_request.check()  # a Ctrl-C that Python dropped or that came while saving
            memory, key, tracer, actions, epsilon = self.player.play(
                params, memory, acting.tracer, acting.frames, acting.restart, key, counters.states,
                outcome and outcome.memory_row())
            acting, outcome = step_games(self.games, acting, actions, tracer)
            counters.states += num_games
            for game in np.flatnonzero(outcome.ended):
                counters.episodes += 1
                self.log.episode(counters.episodes, counters.states, float(epsilon), float(outcome.scores[game]))
            bar.update(num_games)
        bar.close()
        memory = replay.record_outcome_jit(memory, *outcome.memory_row(), self.memory_cfg.reward_clip)
        return memory, acting, key, (rows * num_games, time.perf_counter() - start)

    def learn(self, memory, train_state, key, counters: Counters, played, stop=None):
        """One learning cycle: backward sweep, optimise, log; the memory comes back emptied.

        Returns (memory, train_state, key, mean loss).
        """
        cycle, values = counters.cycles + 1, self.signals.values(counters.states)
        targets_start = time.perf_counter()
        memory, swept = replay.recompute_targets(memory, self.memory_cfg.discount,
                                                 replay.resolve_target_method(self.memory_cfg.target_method))
        swept = {k: float(v) for k, v in jax.device_get(swept).items()}
        targets_seconds = time.perf_counter() - targets_start
        self.log.targets(counters.episodes, counters.states, swept)
        check_cycle(cycle=cycle, states=counters.states, signals=values,
                    values={f"swept Q-value {k[2:]}": swept[k] for k in ("q_min", "q_max")})
        progress, done = self.log.optimising(cycle)
        learn_start = time.perf_counter()
        train_state, key, result = self.learner.optimise(
            train_state, memory, key, learning_rate=values["learning_rate"],
            loss_limit=values["loss_limit"], max_epochs=values["max_epochs"],
            min_epochs=self.min_epochs, progress=progress, stop=stop)
        done()
        counters.cycles = cycle
        seconds = {"play": played[1], "targets": targets_seconds, "optimise": time.perf_counter() - learn_start}
        self.log.cycle(cycle, counters.states, _cycle_metrics(cycle, result, values, swept, played[0], seconds))
        check_cycle(cycle=cycle, states=counters.states, signals=values,
                    values={"batch loss": float(result.mean_loss)}, params=train_state.params)
        return replay.reset(memory), train_state, key, float(result.mean_loss)

    def save(self, counters: Counters, train_state, key) -> None:
        """Checkpoint at ``counters.states``, what was logged so far made durable first: a
        crash after the checkpoint then loses none of what it covers (:mod:`dqn_jax.resume`)."""
        self.log.tracker.persist()
        self.checkpointer.save(counters.states, train_state, key, asdict(counters))


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


# ------------------------------------------------------------------------------- testing


def test(cfg, *, games, player, params, key, episodes: int, max_states: int | None = None,
         frame_sink=None) -> dict:
    """Play ``episodes`` episodes with the test epsilon; the tutorial's statistics.

    ``max_states`` (None: no limit) stops early, counting the states of all games.

    Each game plays a fixed share of the episodes, so stopping never drops the long
    episodes still running (that would bias the mean towards short ones).
    """
    num_games = games.num_envs
    quota = np.array([episodes // num_games + (g < episodes % num_games) for g in range(num_games)])
    done = np.zeros(num_games, dtype=int)
    results: list[float] = []
    window = logs.RewardWindow(30)
    acting = Acting.start(games, player, cfg.seed + 1_000_003)
    episode_of = np.arange(1, num_games + 1)  # each game's episode number, in order of start
    count = 0
    with current_stop_request() as stop_request:
        while (done < quota).any():
            stop_request.check()
            key, tracer, states, q_values, actions, _ = player.act(
                params, acting.tracer, acting.frames, acting.restart, key, count)
            q_host = np.asarray(q_values)
            if frame_sink is not None and done[0] < quota[0]:
                frame_sink(np.asarray(states[0]), q_host[0], int(actions[0]))
            acting, outcome = step_games(games, acting, actions, tracer)
            if frame_sink is not None and outcome.ended[0] and done[0] < quota[0]:
                frame_sink.episode_end()  # one video file per episode of game 0
            count += num_games
            for game in np.flatnonzero(done < quota):
                if outcome.ended[game]:
                    results.append(float(outcome.scores[game]))
                    window.add(outcome.scores[game])
                    done[game] += 1
                event = outcome.ended[game] or outcome.end_life[game] or outcome.rewards[game] != 0
                if cfg.progress and event:
                    print(logs.test_event_line(game, int(episode_of[game]), count, q_host[game],
                                               int(outcome.lives[game]), float(outcome.scores[game]),
                                               window.mean))
                if outcome.ended[game]:
                    episode_of[game] = episode_of.max() + 1
            if max_states is not None and count >= max_states:
                break
    if not results:
        return {"episodes": 0.0, "states": float(count)}
    stats = logs.summary(results)
    stats["states"] = float(count)
    return stats

"""The agent: play N games with the Q-network, learn in cycles, test.

``Player`` is the acting step, jitted once: frames in; encoded states, Q-values,
epsilon-greedy actions out, with the PRNG key threaded through it; ``step_games``
steps the games, for training and testing alike. ``train`` is the flow chart any
algorithm follows: play until it is time to learn, one learning cycle, a checkpoint
(the tutorial's cycle is :class:`dqn_jax.hvass.TutorialCycle`, DQN's
:class:`dqn_jax.dqn.DqnCycle`). ``test`` plays with the test epsilon and reports the
tutorial's statistics.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import jax
import numpy as np

from dqn_jax import logs
from dqn_jax import memory as replay
from dqn_jax.encodings import make_encoding
from dqn_jax.interrupts import stop_request as current_stop_request
from dqn_jax.policy import epsilon_greedy


@dataclass
class Counters:
    """What a checkpoint carries besides the network: training resumes from here."""

    states: int = 0
    episodes: int = 0
    cycles: int = 0


def state_spec(env_cfg, observation_shape, observation_dtype) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype of one stored state (frames with the encoding's channels for Atari)."""
    channels = make_encoding(env_cfg).channels
    if not channels:
        return tuple(observation_shape), np.dtype(observation_dtype)
    return (*observation_shape, channels), np.dtype(np.uint8)


class Player:
    """Acting for N games at once, compiled once; epsilon comes from ``epsilon_fn(count)``.

    ``act`` chooses actions (testing). ``play`` is the training step: it closes the
    previous step's memory row with that step's outcome, chooses the actions and writes
    the decision into the next row, all in one jitted call on the donated memory.
    """

    def __init__(self, network, env_cfg, epsilon_fn, reward_clip: float = 1.0):
        self.encoding = encoding = make_encoding(env_cfg)

        def act(params, tracer, frames, restart, key, count):
            tracer, states = encoding.encode(tracer, frames, restart)
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
        """The encoding's carried state for the first frames (None when it carries none)."""
        return self.encoding.start(frames)


def _as_count(states: int) -> np.float32:
    """A state count for the signals inside jitted code: a float, since JAX's int32 would
    overflow past 2**31 states (exact to 2**24, then to within 1 part in 2**24)."""
    return np.float32(states)


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


@dataclass(frozen=True)
class Budget:
    """When training stops: after ``states`` states or ``episodes`` episodes in all (None: no limit)."""

    states: int | None = None
    episodes: int | None = None

    def left(self, counters: Counters) -> bool:
        return not ((self.states is not None and counters.states >= self.states)
                    or (self.episodes is not None and counters.episodes >= self.episodes))


@dataclass
class Played:
    """What one cycle's playing did: states, seconds, and the algorithm's own statistics."""

    states: int
    seconds: float
    stats: object = None


class Cycle:
    """One learning cycle's steps over the parts the application built; an algorithm
    (:mod:`dqn_jax.hvass`, :mod:`dqn_jax.dqn`) fills in ``empty_memory``, ``play`` and ``learn``:

    * ``play(memory, acting, train_state, key, counters, stop_request)`` plays and records
      until it is time to learn and returns (memory, acting, train_state, key, Played or
      None when nothing was played);
    * ``learn(memory, train_state, key, counters, played, stop)`` returns (memory,
      train_state, key, mean loss or None) and logs the cycle.
    """

    def __init__(self, games, player: Player, signals, checkpointer, log: logs.TrainingLog, budget: Budget):
        self.games, self.player, self.signals = games, player, signals
        self.checkpointer, self.log, self.budget = checkpointer, log, budget
        self.limits = None  # faults.Limits: how far a finite run may go (None: finiteness alone)

    def record_episodes(self, outcome: Outcome, counters: Counters, epsilon) -> None:
        """Count and log the episodes that ended in this step."""
        for game in np.flatnonzero(outcome.ended):
            counters.episodes += 1
            self.log.episode(counters.episodes, counters.states, float(epsilon), float(outcome.scores[game]))

    def save(self, counters: Counters, train_state, key) -> None:
        """Checkpoint at ``counters.states``, what was logged so far made durable first: a
        crash after the checkpoint then loses none of what it covers (:mod:`dqn_jax.resume`)."""
        self.log.tracker.persist()
        self.checkpointer.save(counters.states, train_state, key, asdict(counters))


@dataclass
class TrainResult:
    counters: Counters
    stopped_by: str
    last_mean30: float
    last_loss: float | None


def train(cycle: Cycle, *, train_state, key, counters: Counters, seed: int) -> tuple:
    """The flow chart; returns (train_state, key, TrainResult).

    Play until it is time to learn, then one learning cycle and a checkpoint, until the
    budget is spent. Ctrl-C stops at a safe point (the next step while playing, the
    next batch while optimising), and the run's state is saved first.
    """
    memory = cycle.empty_memory()
    acting = Acting.start(cycle.games, cycle.player, seed + counters.episodes)
    stopped_by, last_loss, saved_at = "budget", None, counters.states
    with current_stop_request() as stop_request:
        try:
            while cycle.budget.left(counters) and not stop_request.requested:
                memory, acting, train_state, key, played = cycle.play(memory, acting, train_state, key,
                                                                      counters, stop_request)
                if played is None:
                    break  # the budget ran out (or Ctrl-C came) before anything was played
                with stop_request.deferred():  # learning donates the memory and the train state
                    memory, train_state, key, loss = cycle.learn(memory, train_state, key, counters, played,
                                                                 stop=lambda: stop_request.requested)
                    last_loss = last_loss if loss is None else loss
                    cycle.save(counters, train_state, key)
                    saved_at = counters.states
                cycle.log.training_curves(every_seconds=300)
        except KeyboardInterrupt:
            stop_request.requested = True
        finally:
            cycle.log.close()
        if stop_request.requested:
            stopped_by = "interrupt"
            cycle.log.say("interrupted: saving a checkpoint and closing the run")
        with stop_request.deferred():
            if counters.states > saved_at:
                cycle.save(counters, train_state, key)
            cycle.checkpointer.wait()
    return train_state, key, TrainResult(counters, stopped_by, cycle.log.window.mean, last_loss)


# ------------------------------------------------------------------------------- testing


def test(*, games, player, params, key, episodes: int, seed: int = 0, progress: bool = True,
         max_states: int | None = None, frame_sink=None) -> dict:
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
    acting = Acting.start(games, player, seed + 1_000_003)
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
                if progress and event:
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

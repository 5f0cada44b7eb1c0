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
from tqdm import tqdm

from dqn_jax import logs
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

        self.act = jax.jit(act, donate_argnums=(1,))
        self._play = jax.jit(play, donate_argnums=(1, 2))

    def play(self, params, memory, tracer, frames, restart, key, count, outcome=None):
        """One training step: returns (memory, key, tracer, actions, epsilon).

        ``outcome`` is the previous step's (rewards, end_life, end_episode), or None
        when no memory row is open (the first step after the memory was emptied).
        """
        pending = outcome is not None
        if not pending:
            games = np.shape(frames)[0]
            outcome = (np.zeros(games, np.float32), np.zeros(games, bool), np.zeros(games, bool))
        return self._play(params, memory, tracer, frames, restart, key, count, outcome, pending)

    def start(self, frames):
        """The tracer state for the first frames (None without a motion trace).

        The last frame is kept as uint8, as the games give it: the states are exactly
        those of a float32 tracer, for a quarter of the bytes read and written per step.
        """
        if not self.motion:
            return None
        frames = jnp.asarray(frames)
        return init_tracer(frames, jnp.uint8 if frames.dtype == jnp.uint8 else jnp.float32)


def sweep_method(method: str) -> str:
    """The memory's sweep method: ``"auto"`` is "scan" on a CPU, "associative" elsewhere."""
    if method == "auto":
        return "scan" if jax.default_backend() == "cpu" else "associative"
    return method


def rows_before_learning(replay_fraction, count_states: int, steps: int, games: int) -> int:
    """Rows to record before the next learning cycle: the memory is full, or its used
    fraction exceeds the replay-fraction signal at the count reached by then.

    Evaluating the signal for every fill level once per cycle gives the same answer
    as the tutorial's check after every state, without a device call per step.
    """
    rows = np.arange(1, steps + 1)
    fraction = np.asarray(replay_fraction(jnp.asarray(count_states + rows * games)))
    over = np.flatnonzero(rows / steps > fraction)
    return int(rows[over[0]]) if over.size else steps


@dataclass
class TrainResult:
    counters: Counters
    stopped_by: str
    last_mean30: float
    last_loss: float | None


def train(cfg, *, games, player, learner, signals, train_state, key, counters: Counters,
          checkpointer, tracker, run_dir: Path, reward_history=()) -> tuple:
    """The training loop; returns (train_state, key, TrainResult)."""
    num_games = games.num_envs
    steps = memory_steps(cfg.memory, num_games)
    shape, dtype = state_spec(cfg.env, games.observation_shape, games.observation_dtype)
    memory = replay.init_memory(steps, num_games, shape, dtype, games.num_actions)
    reward_log = logs.CsvLog(run_dir / "rewards.csv", logs.REWARD_FIELDS)
    q_log = logs.CsvLog(run_dir / "q_values.csv", logs.Q_FIELDS)
    window = logs.RewardWindow(30, reward_history)
    say = tqdm.write if cfg.progress else (lambda _line: None)

    frames, lives = games.reset(seed=cfg.seed + counters.episodes)
    tracer = player.start(frames)
    restart = np.ones(num_games, dtype=bool)
    scores = np.zeros(num_games)
    rows, last_loss, stopped_by = 0, None, "budget"
    saved_at = counters.states

    def budget_left() -> bool:
        return not ((cfg.steps is not None and counters.states >= cfg.steps)
                    or (cfg.episodes is not None and counters.episodes >= cfg.episodes))

    # Ctrl-C stops the run at a safe point: at the next step while playing; while learning
    # the optimise loop ends at its next batch and the cycle's checkpoint is written first.
    with current_stop_request() as stop_request:
        try:
            while budget_left():
                target_rows = rows_before_learning(signals.replay_fraction, counters.states, steps, num_games)
                bar = tqdm(total=target_rows * num_games, desc=f"cycle {counters.cycles + 1}: playing",
                           unit="state", leave=False, disable=not cfg.progress)
                play_start, play_states = time.perf_counter(), counters.states
                outcome = None  # the last step's (rewards, end_life, ended), not yet in the memory
                while rows < target_rows and budget_left():
                    stop_request.check()  # a Ctrl-C that Python dropped or that came while saving
                    memory, key, tracer, actions, epsilon = player.play(
                        train_state.params, memory, tracer, frames, restart, key, counters.states, outcome)
                    step = games.step(np.asarray(actions))
                    ended = step.terminated | step.truncated
                    end_life = (step.lives < lives) & ~ended
                    outcome = (step.rewards, end_life, ended)
                    rows += 1
                    counters.states += num_games
                    scores += step.rewards
                    for game in np.flatnonzero(ended):
                        counters.episodes += 1
                        mean30 = window.add(scores[game])
                        eps = float(epsilon)
                        reward_log.write(counters.episodes, counters.states, float(scores[game]), mean30)
                        tracker.log_metrics({"episode/score": float(scores[game]), "episode/mean30": mean30,
                                             "episode/epsilon": eps, "episode/count": counters.episodes},
                                            step=counters.states)
                        say(logs.episode_line(counters.episodes, counters.states, eps, float(scores[game]),
                                              mean30))
                        scores[game] = 0.0
                    frames, lives, restart = step.frames, step.lives, ended
                    bar.update(num_games)
                bar.close()
                if rows < target_rows:
                    break  # the budget ran out before the memory was ready
                # The sweep and optimise donate the memory and the train state: not to be cut.
                with stop_request.deferred():
                    memory = replay.record_outcome_jit(memory, *outcome, cfg.memory.reward_clip)
                    play_seconds = time.perf_counter() - play_start
                    memory, train_state, key, last_loss = _learn(
                        cfg, learner, signals, memory, train_state, key, counters, tracker, q_log,
                        played=(counters.states - play_states, play_seconds),
                        stop=lambda: stop_request.requested)
                    rows = 0
                    _save(checkpointer, tracker, counters, train_state, key)
                    saved_at = counters.states
        except KeyboardInterrupt:
            stopped_by = "interrupt"
            say("interrupted: saving a checkpoint and closing the run")
        finally:
            reward_log.close()
            q_log.close()
        stopped_by = "interrupt" if stop_request.requested else stopped_by
        with stop_request.deferred():
            if counters.states > saved_at:
                _save(checkpointer, tracker, counters, train_state, key)
            checkpointer.wait()
    return train_state, key, TrainResult(counters, stopped_by, window.mean, last_loss)


def _save(checkpointer, tracker, counters: Counters, train_state, key) -> None:
    """Checkpoint at ``counters.states``, the metrics logged so far sent first: a crash
    after the checkpoint then loses none of what it covers (see :mod:`dqn_jax.resume`)."""
    tracker.flush()
    checkpointer.save(counters.states, train_state, key, asdict(counters))


def _learn(cfg, learner, signals, memory, train_state, key, counters, tracker, q_log, *,
           played: tuple[int, float], stop=None):
    """One learning cycle: backward sweep, optimise, log; the memory comes back emptied.

    Returns (memory, train_state, key, mean loss).
    """
    sweep_start = time.perf_counter()
    memory, sweep_stats = replay.sweep(memory, cfg.memory.discount, sweep_method(cfg.memory.sweep))
    sweep_stats = {k: float(v) for k, v in jax.device_get(sweep_stats).items()}
    sweep_seconds = time.perf_counter() - sweep_start
    values = signals.values(counters.states)
    q_log.write(counters.episodes, counters.states, sweep_stats["q_min"], sweep_stats["q_mean"],
                sweep_stats["q_max"], sweep_stats["q_std"])
    check_cycle(cycle=counters.cycles + 1, states=counters.states, signals=values,
                values={f"swept Q-value {k[2:]}": sweep_stats[k] for k in ("q_min", "q_max")})
    bar = tqdm(desc=f"cycle {counters.cycles + 1}: optimising", unit="batch", leave=False,
               disable=not cfg.progress)

    def progress(done: int, total: int, mean_loss: float) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=True)

    learn_start = time.perf_counter()
    train_state, key, result = learner.optimise(
        train_state, memory, key, learning_rate=values["learning_rate"],
        loss_limit=values["loss_limit"], max_epochs=values["max_epochs"],
        min_epochs=cfg.schedule.min_epochs, progress=progress, stop=stop)
    bar.close()
    learn_seconds = time.perf_counter() - learn_start
    counters.cycles += 1
    metrics = {
        "cycle/loss": float(result.mean_loss),
        "cycle/iterations": float(result.iterations),
        "cycle/epochs": float(result.epochs),
        "cycle/high_error_share": float(result.high_error_share),
        "cycle/learning_rate": values["learning_rate"],
        "cycle/loss_limit": values["loss_limit"],
        "cycle/max_epochs": values["max_epochs"],
        "cycle/replay_fraction": values["replay_fraction"],
        "cycle/states_per_second": played[0] / max(played[1], 1e-9),
        "cycle/play_seconds": played[1],
        "cycle/sweep_seconds": sweep_seconds,
        "cycle/optimise_seconds": learn_seconds,
        "cycle/count": float(counters.cycles),
        **{f"q/{name[2:]}" if name.startswith("q_") else f"sweep/{name}": value
           for name, value in sweep_stats.items()},
    }
    tracker.log_metrics(metrics, step=counters.states)
    check_cycle(cycle=counters.cycles, states=counters.states, signals=values,
                values={"batch loss": float(result.mean_loss)}, params=train_state.params)
    if cfg.progress:
        tqdm.write(f"cycle {counters.cycles}: {result.iterations} batches ({result.epochs:.2f} epochs), "
                   f"loss {result.mean_loss:.4f}, Q mean {sweep_stats['q_mean']:.3f}, "
                   f"learning rate {values['learning_rate']:.2e}")
    return replay.reset(memory), train_state, key, float(result.mean_loss)


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
    frames, lives = games.reset(seed=cfg.seed + 1_000_003)
    tracer = player.start(frames)
    restart = np.ones(num_games, dtype=bool)
    scores = np.zeros(num_games)
    episode_of = np.arange(1, num_games + 1)  # each game's episode number, in order of start
    count = 0
    with current_stop_request() as stop_request:
        while (done < quota).any():
            stop_request.check()
            key, tracer, states, q_values, actions, _ = player.act(params, tracer, frames, restart, key,
                                                                   count)
            q_host = np.asarray(q_values)
            if frame_sink is not None and done[0] < quota[0]:
                frame_sink(np.asarray(states[0]))
            step = games.step(np.asarray(actions))
            count += num_games
            ended = step.terminated | step.truncated
            end_life = (step.lives < lives) & ~ended
            scores += step.rewards
            for game in np.flatnonzero(done < quota):
                if ended[game]:
                    results.append(float(scores[game]))
                    window.add(scores[game])
                    done[game] += 1
                if cfg.progress and (ended[game] or end_life[game] or step.rewards[game] != 0):
                    lives_left = 0 if ended[game] else int(step.lives[game])  # step.lives: the next episode's
                    print(logs.test_event_line(game, int(episode_of[game]), count, q_host[game], lives_left,
                                               float(scores[game]), window.mean))
                if ended[game]:
                    episode_of[game] = episode_of.max() + 1
            scores[ended] = 0.0
            frames, lives, restart = step.frames, step.lives, ended
            if max_states is not None and count >= max_states:
                break
    if not results:
        return {"episodes": 0.0, "states": float(count)}
    stats = logs.summary(results)
    stats["states"] = float(count)
    return stats

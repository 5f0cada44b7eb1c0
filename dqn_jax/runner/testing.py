"""Test mode: play episodes with the test epsilon and report the tutorial's statistics."""

from __future__ import annotations

import numpy as np

from dqn_jax.runner import logs
from dqn_jax.runner.games import Acting, step_games
from dqn_jax.runner.interrupts import stop_request as current_stop_request


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

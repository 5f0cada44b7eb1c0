"""Playing a checkpoint for the analysis: a replay memory, the network's insides, videos.

Everything here works from a restored network and its parameters, the way training
and test mode use them (``Player``, ``step_games``, ``recompute_targets``, ``dqn.td_targets``),
so the pictures show what the run's own agent does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dqn_jax.algorithms import ALGORITHMS, dqn
from dqn_jax.algorithms.hvass.targets import recompute_targets, resolve_target_method
from dqn_jax.analyze import pictures
from dqn_jax.analyze.video import VideoSink
from dqn_jax.core import replay
from dqn_jax.core.acting import Player, state_spec
from dqn_jax.core.schedules import ControlSignals
from dqn_jax.envs import make_games
from dqn_jax.runner.games import Acting, step_games


@dataclass
class Snapshot:
    """A replay memory after its sweep, on the host; arrays are (T, N, ...)."""

    states: np.ndarray
    estimates: np.ndarray  # Q-values estimated while acting
    targets: np.ndarray  # Q-values after the sweep (DQN: its TD target for the action taken)
    actions: np.ndarray
    rewards: np.ndarray
    end_life: np.ndarray
    end_episode: np.ndarray
    errors: np.ndarray
    epsilon: float


def play_memory(cfg, games, network, train_state, count: int, size: int, seed: int) -> Snapshot:
    """Fill a memory of ``size`` states as training would at ``count`` states, and give
    each state its target: the backward sweep's (the tutorial's method) or DQN's."""
    import jax


    signals = ControlSignals.from_config(cfg.schedule)
    player = Player(network, cfg.env, signals.epsilon, cfg.memory.reward_clip)
    shape, dtype = state_spec(cfg.env, games.observation_shape, games.observation_dtype)
    rows = max(2, size // games.num_envs)
    memory = replay.init_memory(rows, games.num_envs, shape, dtype, games.num_actions)
    acting, key, outcome = Acting.start(games, player, seed), jax.random.PRNGKey(seed), None
    for _ in range(rows):
        memory, key, tracer, actions, epsilon = player.play(train_state.params, memory, acting.tracer, acting.frames,
                                                            acting.restart, key, count,
                                                            outcome and outcome.memory_row())
        acting, outcome = step_games(games, acting, actions, tracer)
    memory = replay.record_outcome_jit(memory, *outcome.memory_row(), cfg.memory.reward_clip)
    estimates = np.array(memory.q_values)  # a copy: the sweep donates the memory
    if issubclass(ALGORITHMS[cfg.algorithm.name], dqn.Dqn):  # its targets come from a target network
        host = jax.device_get(memory)
        return _td_snapshot(cfg, network, train_state.target_params, host, estimates, float(epsilon))
    memory, _ = recompute_targets(memory, cfg.algorithm.discount, resolve_target_method(cfg.algorithm.target_method))
    host = jax.device_get(memory)
    return Snapshot(np.asarray(host.states), estimates, np.asarray(host.q_values),
                    np.asarray(host.actions), np.asarray(host.rewards), np.asarray(host.end_life),
                    np.asarray(host.end_episode), np.asarray(host.errors), float(epsilon))


def _td_snapshot(cfg, network, target_params, host, estimates: np.ndarray, epsilon: float) -> Snapshot:
    """The memory with DQN's targets: r + discount * V(s') for the action taken (as
    :func:`dqn.td_targets`), the other actions' Q as estimated. The last row has no next
    state in the memory, so it is left out."""
    import jax.numpy as jnp


    states, actions = np.asarray(host.states), np.asarray(host.actions)
    rows, games, num_actions = estimates.shape
    flat = jnp.asarray(states[1:].reshape(-1, *states.shape[2:]))
    next_q_target = np.concatenate([np.asarray(network.apply(target_params, flat[i:i + 256]))
                                    for i in range(0, len(flat), 256)])
    terminal = np.asarray(host.end_life) | np.asarray(host.end_episode)
    td = dqn.td_targets(np.asarray(host.rewards)[:-1].reshape(-1), terminal[:-1].reshape(-1), next_q_target,
                        estimates[1:].reshape(-1, num_actions), cfg.algorithm.discount,
                        double=cfg.algorithm.name == "double_dqn")
    td = np.asarray(td).reshape(rows - 1, games)
    targets = estimates[:-1].copy()
    np.put_along_axis(targets, actions[:-1, :, None], td[..., None], axis=-1)
    taken = np.take_along_axis(estimates[:-1], actions[:-1, :, None], axis=-1)[..., 0]
    return Snapshot(states[:-1], estimates[:-1], targets, actions[:-1], np.asarray(host.rewards)[:-1],
                    np.asarray(host.end_life)[:-1], np.asarray(host.end_episode)[:-1],
                    np.abs(td - taken), epsilon)


def pick_states(snapshot: Snapshot, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the ``n`` largest estimation errors (largest first) and ``n`` random states."""
    errors = snapshot.errors.reshape(-1)
    n = min(n, errors.size)
    largest = np.argsort(-errors, kind="stable")[:n]
    chosen = np.random.default_rng(seed).choice(errors.size, size=n, replace=False)
    return largest, chosen


def state_panels(snapshot: Snapshot, flat: np.ndarray) -> list[pictures.StatePanel]:
    games = snapshot.actions.shape[1]
    panels = []
    for i in flat:
        t, g = divmod(int(i), games)
        a = int(snapshot.actions[t, g])
        panels.append(pictures.StatePanel(
            state=snapshot.states[t, g], action=a, reward=float(snapshot.rewards[t, g]),
            q=snapshot.estimates[t, g], target=float(snapshot.targets[t, g, a]),
            error=float(snapshot.errors[t, g]), end_life=bool(snapshot.end_life[t, g]),
            end_episode=bool(snapshot.end_episode[t, g]), index=(t, g)))
    return panels


def panel_record(panel: pictures.StatePanel, names: list[str]) -> dict:
    return {"row": panel.index[0], "game": panel.index[1], "action": names[panel.action],
            "reward": panel.reward, "q": {n: float(v) for n, v in zip(names, panel.q, strict=True)},
            "target": panel.target, "error": panel.error}


# ---------------------------------------------------------------------------- the network

def conv_layers(network, params, state: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Each convolution's output for ``state`` after its ReLU, as (name, (h, w, channels)).

    Flax's ``capture_intermediates`` keeps the return value of every ``nn.Conv`` call.
    """
    import flax.linen as nn

    _, variables = network.apply(params, state[None], mutable=["intermediates"],
                                 capture_intermediates=lambda module, _: isinstance(module, nn.Conv))
    found = variables.get("intermediates", {})
    names = sorted((k for k in found if k.startswith("Conv_")), key=lambda k: int(k.split("_")[1]))
    return [(f"conv {i + 1}", np.maximum(np.asarray(found[k]["__call__"][0][0], np.float32), 0.0))
            for i, k in enumerate(names)]


def layer_kernels(params, prefix: str) -> list[tuple[str, np.ndarray]]:
    """The kernels of the layers named ``<prefix>_<i>`` in order, as (name, array)."""
    layers = params["params"]
    names = sorted((k for k in layers if k.startswith(f"{prefix}_")), key=lambda k: int(k.split("_")[1]))
    return [(f"{prefix.lower()} {i + 1}", np.asarray(layers[k]["kernel"])) for i, k in enumerate(names)]


def network_pictures(cfg, network, params, state, out: Path, title: str) -> list[Path]:
    """Filters and convolution outputs (hvass, nature) or dense weight maps (mlp)."""
    if cfg.network.name == "mlp":
        return [pictures.dense_weights(layer_kernels(params, "Dense"), out / "dense-weights.png",
                                       f"{title}: dense weight matrices")]
    (_, first), *_ = layer_kernels(params, "Conv")
    return [
        pictures.conv_filters(first, out / "conv1-filters.png", title),
        pictures.conv_outputs(state, conv_layers(network, params, state), out / "conv-outputs.png",
                              f"{title}: convolution outputs for the state of largest error"),
    ]


# ---------------------------------------------------------------------------- videos

def record_videos(cfg, network, params, action_names, out: Path, *, episodes: int, max_steps: int,
                  gif: bool, q_values: bool, seed: int) -> list[dict]:
    """Play ``episodes`` test episodes of one game; each becomes test-episode-<k>.mp4 (+ .gif).

    A video stops at ``max_steps`` steps even if its episode goes on (the next one starts
    afresh). Returns per video: its files, the steps played, the score and how it ended.
    """
    import jax
    import optax


    player = Player(network, cfg.env, optax.constant_schedule(cfg.schedule.epsilon_test))
    sink = VideoSink(out / "test-episode.mp4", gif=gif, q_values=q_values,
                             action_names=action_names, episodes=episodes, per_episode=True)
    videos: list[dict] = []
    key = jax.random.PRNGKey(seed)
    with make_games(cfg.env, 1, seed) as games:
        while sink.wants_frames:
            frames, _ = games.reset(seed=seed + 1_000_003 + len(videos))
            tracer, restart = player.start(frames), np.ones(1, bool)
            steps, score, ended = 0, 0.0, False
            while not ended and steps < max_steps:
                key, tracer, states, q, actions, _ = player.act(params, tracer, frames, restart, key, 0)
                sink(np.asarray(states[0]), np.asarray(q[0]), int(actions[0]))
                step = games.step(np.asarray(actions))
                steps, score, ended = steps + 1, score + float(step.rewards[0]), bool(step.ended[0])
                frames, restart = step.frames, step.ended
            sink.episode_end()
            files = [p for p in sink.paths if p.stem == f"{sink.path.stem}-{len(videos) + 1}"]
            videos.append({"files": [str(p) for p in files], "steps": steps, "score": score,
                           "episode_ended": ended, "frames": {str(p): sink.frames[p] for p in files}})
    sink.close()
    return videos

"""Before/after of the acting step: the original tracer (float32 last frame, stack into
(N, H, W, 2)) against the current one, both against raw ale-py, alternating in one run.

    .venv/bin/python experiments/compare_acting.py [--steps 300] [--repeats 7]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from bench_acting import NETWORKS, AgentLoop, raw_env_rate
from omegaconf import OmegaConf

from dqn_jax.agent import Player
from dqn_jax.config import Config
from dqn_jax.envs import make_games
from dqn_jax.motion import TracerState
from dqn_jax.policy import epsilon_greedy


@jax.jit
def trace_before(tracer, frames, restart, threshold=20.0, decay=0.75):
    """motion.trace as it was before issue #5."""
    frame = jnp.asarray(frames).astype(jnp.float32)
    motion = jnp.where(jnp.abs(frame - tracer.last_input) > threshold, 255.0, 0.0)
    output = jnp.clip(motion + decay * tracer.last_output, 0.0, 255.0)
    restart = jnp.asarray(restart, dtype=bool).reshape((-1,) + (1,) * (frame.ndim - 1))
    output = jnp.where(restart, 0.0, output)
    new = TracerState(last_input=frame, last_output=output)
    return new, jnp.stack([new.last_input, new.last_output], axis=-1).astype(jnp.uint8)


class PlayerBefore(Player):
    def __init__(self, network, env_cfg, epsilon_fn):
        threshold, decay = float(env_cfg.trace_threshold), float(env_cfg.trace_decay)
        self.motion = True

        def act(params, tracer, frames, restart, key, count):
            tracer, states = trace_before(tracer, frames, restart, threshold, decay)
            q_values = network.apply(params, states)
            key, pick = jax.random.split(key)
            epsilon = epsilon_fn(count)
            return key, tracer, states, q_values, epsilon_greedy(pick, q_values, epsilon), epsilon

        self.act = jax.jit(act, donate_argnums=(1,))

    def start(self, frames):
        frames = jnp.asarray(frames, jnp.float32)
        return TracerState(frames, jnp.zeros_like(frames))


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sync", action="store_true", help="jax_cpu_enable_async_dispatch=False")
    args = parser.parse_args(argv)
    if args.sync:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    cfg = OmegaConf.to_object(OmegaConf.structured(Config))
    games = make_games(cfg.env, 8, seed=0)
    after = AgentLoop(cfg, games, NETWORKS["minimal"], 50_000)
    before = AgentLoop(cfg, games, NETWORKS["minimal"], 50_000, player_cls=PlayerBefore)
    rng = np.random.default_rng(0)
    rates = {"raw": [], "before": [], "after": []}
    for _ in range(args.repeats):
        rates["raw"].append(raw_env_rate(games, args.steps, rng))
        rates["before"].append(before.run(args.steps))
        rates["after"].append(after.run(args.steps))
    games.close()
    raw = np.array(rates["raw"])
    for name in ("before", "after"):
        ratio = np.median(np.array(rates[name]) / raw)
        print(f"{name:6s}: median {np.median(rates[name]):7.0f} env-steps/s, ratio to raw {ratio:.1%}")
    print(f"after / before: {np.median(np.array(rates['after']) / np.array(rates['before'])):.3f}")


if __name__ == "__main__":
    main()

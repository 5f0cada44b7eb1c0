"""Acting-pipeline throughput against the raw ale-py vector environment, side by side.

The agent's step is what training does per step: vector games + motion tracer +
jitted Q forward + epsilon-greedy + a write into the replay memory. The reference is
the same vector environment stepping with random actions. Both run in this process,
alternating, and the ratio of their env-steps per second is reported.

    .venv/bin/python experiments/bench_acting.py [--games 8] [--steps 400] [--networks minimal,nature,hvass]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from omegaconf import OmegaConf

from dqn_jax import memory as replay
from dqn_jax.agent import Player, state_spec
from dqn_jax.config import Config, NetworkConfig
from dqn_jax.envs import make_games
from dqn_jax.learner import create_train_state, make_optimizer
from dqn_jax.networks import make_network
from dqn_jax.schedules import linear_signal

NETWORKS = {
    "minimal": NetworkConfig(name="mlp", dense=[], init_stddev=0.0),  # one dense layer
    "nature": NetworkConfig(name="nature", conv_features=[32, 64, 64], conv_kernels=[8, 4, 3],
                            conv_strides=[4, 2, 1], dense=[512], init_stddev=0.0),
    "hvass": NetworkConfig(),
}


def raw_env_rate(games, steps: int, rng) -> float:
    games.reset(seed=1)
    start = time.perf_counter()
    for _ in range(steps):
        games.step(rng.integers(0, games.num_actions, games.num_envs))
    return steps * games.num_envs / (time.perf_counter() - start)


class AgentLoop:
    """The training loop's per-step work, without learning."""

    def __init__(self, cfg, games, network_cfg, memory_size: int, player_cls=Player):
        network = make_network(network_cfg, games.num_actions)
        shape, dtype = state_spec(cfg.env, games.observation_shape, games.observation_dtype)
        self.state = create_train_state(network, jax.random.PRNGKey(0), np.zeros((1, *shape), dtype),
                                        make_optimizer())
        self.player = player_cls(network, cfg.env, linear_signal(1.0, 0.1, 1e6))
        self.memory = replay.init_memory(memory_size // games.num_envs, games.num_envs, shape, dtype,
                                         games.num_actions)
        self.games = games
        self.run(3)  # compile

    def run(self, steps: int) -> float:
        games = self.games
        frames, lives = games.reset(seed=1)
        tracer, restart, key = self.player.start(frames), np.ones(games.num_envs, bool), jax.random.PRNGKey(1)
        memory = replay.reset(self.memory)
        start = time.perf_counter()
        for i in range(steps):
            key, tracer, states, q, actions, _ = self.player.act(self.state.params, tracer, frames,
                                                                 restart, key, i)
            step = games.step(np.asarray(actions))
            ended = step.terminated | step.truncated
            memory = replay.add_jit(memory, states, q, actions, step.rewards,
                                    (step.lives < lives) & ~ended, ended, 1.0)
            frames, lives, restart = step.frames, step.lives, ended
            if (i + 1) % (memory.steps - 1) == 0:
                memory = replay.reset(memory)
        jax.block_until_ready(memory.count)
        self.memory = memory
        return steps * games.num_envs / (time.perf_counter() - start)


def measure(network: str, games_count: int, steps: int, repeats: int) -> dict:
    cfg = OmegaConf.to_object(OmegaConf.structured(Config))
    cfg.env.num_envs = games_count
    games = make_games(cfg.env, games_count, seed=0)
    rng = np.random.default_rng(0)
    loop = AgentLoop(cfg, games, NETWORKS[network], memory_size=min(50_000, 200 * steps))
    raw, agent = [], []
    for _ in range(repeats):  # alternate, so both see the same machine load
        raw.append(raw_env_rate(games, steps, rng))
        agent.append(loop.run(steps))
    games.close()
    raw_rate, agent_rate = float(np.median(raw)), float(np.median(agent))
    # The median of the per-pair ratios: each pair ran back to back under the same load.
    pair_ratio = float(np.median(np.array(agent) / np.array(raw)))
    return {"network": network, "games": games_count, "raw": raw_rate, "agent": agent_rate,
            "ratio": pair_ratio, "ratio_of_medians": agent_rate / raw_rate}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, default=8)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--networks", default="minimal,nature,hvass")
    args = parser.parse_args(argv)
    results = []
    for name in args.networks.split(","):
        steps = args.steps if name == "minimal" else max(20, args.steps // (5 if name == "nature" else 20))
        r = measure(name, args.games, steps, args.repeats)
        target = " (target >= 85%)" if name == "minimal" else ""
        verdict = ("PASS" if r["ratio"] >= 0.85 else "FAIL") if name == "minimal" else "info"
        print(f"acting pipeline, {name:7s} network, {r['games']} games: agent {r['agent']:8.0f} env-steps/s, "
              f"raw ale-py {r['raw']:8.0f} env-steps/s, ratio {r['ratio']:.1%}{target}  {verdict}", flush=True)
        results.append(r)
    return results


if __name__ == "__main__":
    main()

"""Acting-pipeline throughput against the raw ale-py vector environment, side by side.

The agent's step is what training does per step: vector games + motion tracer +
jitted Q forward + epsilon-greedy + the write into the replay memory (one jitted
call, ``Player.play``). The reference is a second vector environment of the same game
and size stepping with random actions. The two alternate in short chunks, many times,
and the figure is the median over pairs of (raw seconds / agent seconds) for the same
number of env-steps: on a shared or virtualised machine the speed of the raw games
alone drifts by 2x within seconds, and short alternating chunks see the same drift.

    .venv/bin/python experiments/bench_acting.py [--games 8] [--chunk 25] [--pairs 40] [--networks minimal,nature,hvass]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from dqn_jax.config import Config, HvassConfig, NetworkConfig
from dqn_jax.core import replay
from dqn_jax.core.acting import Player, state_spec
from dqn_jax.core.networks import make_network
from dqn_jax.core.schedules import linear_signal
from dqn_jax.core.training import create_train_state, make_optimizer
from dqn_jax.envs import make_games

NETWORKS = {
    "minimal": NetworkConfig(name="mlp", dense=[], init_stddev=0.0),  # one dense layer
    "nature": NetworkConfig(name="nature", conv_features=[32, 64, 64], conv_kernels=[8, 4, 3],
                            conv_strides=[4, 2, 1], dense=[512], init_stddev=0.0),
    "hvass": NetworkConfig(),
}


class RawLoop:
    """The reference: the vector games with random actions."""

    def __init__(self, games, seed: int = 0):
        self.games, self.rng = games, np.random.default_rng(seed)
        games.reset(seed=1)

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steps of all games."""
        games = self.games
        start = time.perf_counter()
        for _ in range(steps):
            games.step(self.rng.integers(0, games.num_actions, games.num_envs))
        return time.perf_counter() - start


class AgentLoop:
    """The training loop's per-step work, without learning; it carries on across calls."""

    def __init__(self, cfg, games, network_cfg, memory_size: int):
        network = make_network(network_cfg, games.num_actions)
        shape, dtype = state_spec(cfg.env, games.observation_shape, games.observation_dtype)
        self.params = create_train_state(network, jax.random.PRNGKey(0), np.zeros((1, *shape), dtype),
                                         make_optimizer()).params
        self.player = Player(network, cfg.env, linear_signal(1.0, 0.1, 1e6))
        self.memory = replay.init_memory(max(2, memory_size // games.num_envs), games.num_envs, shape, dtype,
                                         games.num_actions)
        self.games = games
        self.frames, self.lives = games.reset(seed=1)
        self.tracer, self.restart = self.player.start(self.frames), np.ones(games.num_envs, bool)
        self.key, self.outcome, self.count, self.rows = jax.random.PRNGKey(1), None, 0, 0
        self.run(3)  # compile

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` agent steps of all games."""
        games, player = self.games, self.player
        memory, tracer, key, outcome = self.memory, self.tracer, self.key, self.outcome
        frames, lives, restart = self.frames, self.lives, self.restart
        start = time.perf_counter()
        for _ in range(steps):
            memory, key, tracer, actions, _ = player.play(self.params, memory, tracer, frames, restart, key,
                                                          self.count, outcome)
            step = games.step(np.asarray(actions))
            ended = step.terminated | step.truncated
            outcome = (step.rewards, (step.lives < lives) & ~ended, ended)
            frames, lives, restart = step.frames, step.lives, ended
            self.count += games.num_envs
            self.rows += 1
            if self.rows == memory.rows:  # full: empty it, as a learning cycle would
                memory, outcome, self.rows = replay.reset(memory), None, 0
        jax.block_until_ready(memory.count)
        seconds = time.perf_counter() - start
        self.memory, self.tracer, self.key, self.outcome = memory, tracer, key, outcome
        self.frames, self.lives, self.restart = frames, lives, restart
        return seconds


def measure(network: str, games_count: int, chunk: int, pairs: int) -> dict:
    """Alternate ``pairs`` chunks of ``chunk`` steps of the raw games and of the agent."""
    cfg = Config(algorithm=HvassConfig())
    raw_games = make_games(cfg.env, games_count, seed=0)
    agent_games = make_games(cfg.env, games_count, seed=0)
    raw = RawLoop(raw_games)
    agent = AgentLoop(cfg, agent_games, NETWORKS[network], memory_size=20_000)
    raw.run(3)
    raw_s, agent_s, raw_cpu, agent_cpu = [], [], [], []
    for _ in range(pairs):
        cpu = time.process_time()  # all threads: the games' worker threads too
        raw_s.append(raw.run(chunk))
        raw_cpu.append(time.process_time() - cpu)
        cpu = time.process_time()
        agent_s.append(agent.run(chunk))
        agent_cpu.append(time.process_time() - cpu)
    raw_games.close()
    agent_games.close()
    raw_s, agent_s = np.array(raw_s), np.array(agent_s)
    env_steps = chunk * games_count
    return {"network": network, "games": games_count, "raw": env_steps / float(np.median(raw_s)),
            "agent": env_steps / float(np.median(agent_s)), "ratio": float(np.median(raw_s / agent_s)),
            "ratio_of_totals": float(raw_s.sum() / agent_s.sum()),
            "raw_step_ms": 1e3 * float(np.median(raw_s)) / chunk, "agent_step_ms": 1e3 * float(np.median(agent_s)) / chunk,
            # CPU time per step of all games, summed over threads. With every core busy
            # stepping the games, raw_cpu / agent_cpu bounds the ratio however well the
            # agent's work overlaps the games'.
            "raw_cpu_ms": 1e3 * float(np.median(raw_cpu)) / chunk,
            "agent_cpu_ms": 1e3 * float(np.median(agent_cpu)) / chunk}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=25, help="steps per chunk (minimal network)")
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--networks", default="minimal,nature,hvass")
    args = parser.parse_args(argv)
    results = []
    for name in args.networks.split(","):
        chunk = args.chunk if name == "minimal" else max(2, args.chunk // (5 if name == "nature" else 25))
        r = measure(name, args.games, chunk, args.pairs)
        target = " (target >= 85%)" if name == "minimal" else ""
        verdict = ("PASS" if r["ratio"] >= 0.85 else "FAIL") if name == "minimal" else "info"
        print(f"acting pipeline, {name:7s} network, {r['games']} games: agent {r['agent']:8.0f} env-steps/s, "
              f"raw ale-py {r['raw']:8.0f} env-steps/s, ratio {r['ratio']:.1%} "
              f"(totals {r['ratio_of_totals']:.1%}){target}  {verdict}", flush=True)
        results.append(r)
    return results


if __name__ == "__main__":
    main()

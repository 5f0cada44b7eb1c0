"""Run by tests/test_learners.py in a process of its own with 3 CPU devices
(``python -m tests.learners_check``): one DQN gradient step on the same batch, whole on
one device and split over 1 and 2 learner devices; prints the differences as JSON."""

from __future__ import annotations

import json
import os

from dqn_jax.algorithms.learners import host_device_flags

os.environ["XLA_FLAGS"] = host_device_flags(2, os.environ.get("XLA_FLAGS", ""))

import jax  # noqa: E402  (after the flags)
import numpy as np  # noqa: E402

from dqn_jax.algorithms import dqn  # noqa: E402
from dqn_jax.core import replay  # noqa: E402
from dqn_jax.core.networks import make_network  # noqa: E402
from dqn_jax.core.training import create_train_state, make_optimizer  # noqa: E402
from tests.programs import add  # noqa: E402


def filled_memory(rows=64, games=2, shape=(12, 12, 2), actions=3, seed=0):
    rng = np.random.default_rng(seed)
    memory = replay.init_memory(rows, games, shape, np.uint8, actions, circular=True)
    for _ in range(rows + 5):
        memory = add(memory, rng.integers(0, 256, (games, *shape), np.uint8), np.zeros((games, actions), np.float32),
                     rng.integers(0, actions, games), rng.choice([-1.0, 0.0, 1.0], games), rng.random(games) < 0.1,
                     rng.random(games) < 0.05)
    return memory


def one_step(learners: int, double: bool, n_step: int):
    from dqn_jax.config import NetworkConfig

    network = make_network(NetworkConfig(name="nature", conv_features=[4, 8], conv_kernels=[4, 3],
                                         conv_strides=[2, 1], dense=[16]), 3)
    optimizer = make_optimizer(decay=0.95, eps=1e-5, centered=True)
    state = dqn.with_target(create_train_state(network, jax.random.key(0), np.zeros((1, 12, 12, 2), np.uint8),
                                               optimizer))
    update = dqn.Update(network, optimizer, batch_size=8, discount=0.9, huber_delta=1.0, double=double,
                        target_copy_every=2, n_step=n_step, learners=learners)
    stats, key, memory = dqn.Stats.zeros(), jax.random.key(1), filled_memory()
    for _ in range(3):  # the second step copies into the target network
        state, stats, memory, key = update(state, stats, memory, key, np.float32(1e-3))
    return jax.device_get((state, stats, jax.random.key_data(key)))


def main() -> None:
    out = {"devices": len(jax.devices("cpu"))}
    for double, n_step in ((False, 1), (True, 3)):
        whole = one_step(0, double, n_step)
        for learners in (1, 2):
            split = one_step(learners, double, n_step)
            diff = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b)))),
                                whole, split)
            out[f"double={double} n={n_step} learners={learners}"] = {
                "params": max(jax.tree.leaves(diff[0].params)), "target": max(jax.tree.leaves(diff[0].target_params)),
                "updates": int(split[0].updates), "loss": diff[1].loss, "q_min": diff[1].q_min, "key": diff[2],
                "param_scale": max(float(np.max(np.abs(a))) for a in jax.tree.leaves(whole[0].params)),
                "moved": max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(whole[0].params),
                                                                          jax.tree.leaves(whole[0].target_params),
                                                                          strict=True))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()

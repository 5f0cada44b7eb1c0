"""Learning beside acting on a CPU: the learners' devices, and the games' copy of the network.

On a CPU, XLA runs a DQN gradient step of batch 32 on about one core whatever its thread
settings, and the games wait for each step (docs/benchmarks.md, "Learning beside
acting"). With ``algorithm.learner_devices=k`` the process has k + 1 CPU devices
(:func:`host_device_flags`, set before JAX starts): device 0 plays the games and holds
the replay memory, where the batches are drawn; devices 1..k hold the train state, and
each steps on 1/k of every batch with the whole batch's mean gradient (:class:`Learners`).
The games play on with the network one gradient step old (:class:`ActingCopies`), so a
step runs while the games play the next states.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dqn_jax.config import ConfigError

AXIS = "learners"  # the named axis the batch is split over
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def host_device_flags(learners: int, flags: str) -> str:
    """``XLA_FLAGS`` with one CPU device for the games and one per learner (``flags``
    unchanged when ``learners`` is 0 or they already ask for a device count). Each device
    runs single-threaded: the devices are the parallelism."""
    if not learners or DEVICE_COUNT_FLAG in flags:
        return flags
    return f"{DEVICE_COUNT_FLAG}={learners + 1} --xla_cpu_multi_thread_eigen=false {flags}".strip()


def request_host_devices(learners: int) -> None:
    """Set ``XLA_FLAGS`` for ``learners`` (:func:`host_device_flags`); XLA reads them when
    JAX starts its backend, so this must come before anything runs on a device."""
    os.environ["XLA_FLAGS"] = host_device_flags(learners, os.environ.get("XLA_FLAGS", ""))


def learner_mesh(count: int) -> Mesh:
    """The learners' devices: CPU devices 1..count (device 0 plays). Raises ConfigError when
    JAX does not train on the CPU or started with too few CPU devices."""
    if jax.default_backend() != "cpu":
        raise ConfigError(f"algorithm.learner_devices={count} is for training on a CPU; JAX trains on "
                          f"{jax.default_backend()} here: use algorithm.learner_devices=0")
    devices = jax.devices("cpu")
    if len(devices) < count + 1:
        raise ConfigError(f"algorithm.learner_devices={count} needs {count + 1} CPU devices and JAX started with "
                          f"{len(devices)} in this process; start it with XLA_FLAGS={DEVICE_COUNT_FLAG}={count + 1} "
                          "(python -m dqn_jax sets it) or use algorithm.learner_devices=0")
    return Mesh(np.array(devices[1:count + 1]), (AXIS,))


class Learners:
    """``learn(state, stats, batch, learning_rate, axis)`` on ``count`` devices of its own,
    jitted once; the train state is replicated on them, the batch split between them."""

    def __init__(self, count: int, learn):
        self.count, self._learn, self._jit = int(count), learn, None

    def _compile(self) -> None:
        mesh = learner_mesh(self.count)
        self.replicated, self.split = NamedSharding(mesh, P()), NamedSharding(mesh, P(AXIS))
        step = jax.shard_map(functools.partial(self._learn, axis=AXIS), mesh=mesh,
                             in_specs=(P(), P(), P(AXIS), P()), out_specs=(P(), P()), check_vma=False)
        self._jit = jax.jit(step, donate_argnums=(0, 1))

    def step(self, state, stats, batch, learning_rate) -> tuple:
        """Returns (state, stats) on the learners' devices; ``state`` and ``stats`` are donated."""
        if self._jit is None:
            self._compile()
        # a no-op once they are there: a fresh or restored state arrives on the games' device
        state, stats, learning_rate = jax.device_put((state, stats, learning_rate), self.replicated)
        return self._jit(state, stats, jax.device_put(batch, self.split), learning_rate)


class ActingCopies:
    """The games' copy of the network, one gradient step old.

    After each step its variables are copied to the games' device (:meth:`stepped`); the
    games play with the copy taken after the step before (:meth:`params`), which is done
    or nearly, while the newest step runs on the learners. A train state that no step of
    ours produced (a fresh or restored one) is copied as it is.
    """

    def __init__(self):
        self.device = jax.devices("cpu")[0]
        self._source, self._older, self._newer = None, None, None

    def stepped(self, train) -> None:
        self._older, self._newer = self._newer, jax.device_put(train.params, self.device)
        self._source = train

    def params(self, train):
        if train is not self._source:
            self._source, self._older, self._newer = train, None, jax.device_put(train.params, self.device)
        return self._newer if self._older is None else self._older

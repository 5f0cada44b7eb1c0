"""The algorithms, behind one interface (:mod:`dqn_jax.algorithms.base`), built from the config.

* ``hvass/``: the tutorial's method (backward sweep, error-split batches, epochs);
* ``dqn.py``: DQN and Double DQN;
* ``sweep_dqn.py``: DQN trained on the tutorial's backward sweep (λ-returns) over a refreshed window.

:func:`make_parts` builds what every algorithm shares (the network, the optimiser, a
fresh train state); :func:`build` the algorithm ``cfg.algorithm.name`` names, from
plain values of the config. ``ALGORITHMS`` is the registry: a new algorithm adds its
class here (``docs/algorithms.md``).

May import: ``dqn_jax.core`` and ``dqn_jax.config``; never the runner, tracking,
sweeps or analysis.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from dqn_jax.algorithms import dqn, sweep_dqn
from dqn_jax.algorithms.base import Algorithm, MemorySpec
from dqn_jax.algorithms.hvass.algorithm import Hvass
from dqn_jax.config import memory_rows, stored_stack
from dqn_jax.core.acting import state_spec
from dqn_jax.core.networks import make_network
from dqn_jax.core.schedules import ControlSignals
from dqn_jax.core.training import create_train_state, optimizer_from


class Parts(NamedTuple):
    """What every algorithm is built around: the network, the optimiser, a fresh train state."""

    network: object
    optimizer: object
    train_state: object
    key: object  # the run's PRNG key after the network's initialisation took its share


def make_parts(cfg, games, seed: int) -> Parts:
    """The network, optimiser and a fresh train state for the games at hand."""
    network = make_network(cfg.network, games.num_actions)
    optimizer = optimizer_from(cfg.optimizer)
    shape, dtype = state_spec(cfg.env, games.observation_shape, games.observation_dtype)
    key, init_key = jax.random.split(jax.random.PRNGKey(seed))
    train_state = create_train_state(network, init_key, np.zeros((1, *shape), dtype), optimizer)
    return Parts(network, optimizer, train_state, key)


def memory_spec(cfg, games) -> MemorySpec:
    shape, dtype = state_spec(cfg.env, games.observation_shape, games.observation_dtype)
    return MemorySpec(memory_rows(cfg.memory, games.num_envs), games.num_envs, shape, dtype, games.num_actions,
                      stored_stack(cfg))


ALGORITHMS: dict[str, type[Algorithm]] = {"hvass": Hvass, "dqn": dqn.Dqn, "double_dqn": dqn.Dqn,
                                          "sweep_dqn": sweep_dqn.SweepDqn}


def build(cfg, parts: Parts, games) -> Algorithm:
    """The algorithm ``cfg.algorithm.name`` names, for ``games``, around ``parts``."""
    return ALGORITHMS[cfg.algorithm.name].from_config(cfg, parts, memory_spec(cfg, games),
                                                      ControlSignals.from_config(cfg.schedule))

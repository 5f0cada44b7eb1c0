"""Will the run fit? The replay memory and the network, checked before anything is allocated.

The replay memory is by far the largest thing a run holds (about 16.8 kB a state,
3.4 GB for the tutorial's 200,000 states). Allocating more than the machine has ends
in an XLA ``RESOURCE_EXHAUSTED`` traceback, or in the kernel killing the process
hours later. :func:`check_fits` computes the exact bytes from the shapes alone
(``jax.eval_shape``, nothing allocated) and compares them with the free memory where
they will live: the accelerator's when JAX trains on one, else the host's.
"""

from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import psutil

from dqn_jax.config import ConfigError, memory_rows
from dqn_jax.core import replay

USABLE_SHARE = 0.9  # of the free memory; the rest is left for XLA's buffers and the games
NETWORK_COPIES = 4  # parameters, RMSProp's accumulator, gradients and the updated parameters
TARGET_COPIES = 2  # DQN's target network and centred RMSProp's mean gradient


@dataclass(frozen=True)
class Need:
    """Bytes a run needs: the replay memory (per state and in all) and the network."""

    memory_bytes: int
    bytes_per_state: float
    network_bytes: int

    @property
    def total(self) -> int:
        return self.memory_bytes + self.network_bytes


def _nbytes(tree) -> int:
    return sum(int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def estimate(memory_cfg, num_games: int, state_shape, state_dtype, num_actions: int,
             network, sample_state, network_copies: int = NETWORK_COPIES, stack: int = 1) -> Need:
    """The bytes of the replay memory and of the network's train state, from shapes only
    (``stack`` > 1: a memory of frames, ``core.replay``)."""
    rows = memory_rows(memory_cfg, num_games)
    init = functools.partial(replay.init_memory, rows, num_games, tuple(state_shape),
                             state_dtype, num_actions, circular=stack > 1, stack=stack)
    memory_bytes = _nbytes(jax.eval_shape(init))
    params = jax.eval_shape(network.init, jax.random.PRNGKey(0), sample_state)
    return Need(memory_bytes, memory_bytes / (rows * num_games), network_copies * _nbytes(params))


def free_memory() -> tuple[int, str]:
    """Free bytes where the replay memory will live, and that place's name."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), f"{device.platform} memory"
    return int(psutil.virtual_memory().available), "host memory"


def _gb(count: float) -> str:
    return f"{count / 1e9:,.2f} GB"


def check_fits(memory_cfg, num_games: int, need: Need, free: tuple[int, str] | None = None) -> None:
    """Raise ConfigError, with the largest ``memory.size`` that fits, if ``need`` does not fit."""
    available, where = free if free is not None else free_memory()
    budget = USABLE_SHARE * available
    if need.total <= budget:
        return
    room = budget - need.network_bytes
    largest = int(room // need.bytes_per_state) // num_games * num_games if room > 0 else 0
    advice = (f"the largest memory.size that fits is {largest}" if largest >= 2 * num_games
              else "the network alone does not fit: choose a smaller network")
    raise ConfigError(
        f"memory.size={memory_cfg.size} needs {_gb(need.memory_bytes)} for the replay memory "
        f"({need.bytes_per_state:,.0f} bytes a state) and {_gb(need.network_bytes)} for the network "
        f"and optimiser, but {where} has {_gb(available)} free; {advice}")


def check_disk_for_memory(need: Need, run_dir, saved_bytes: int = 0) -> None:
    """Raise ConfigError if the disk under ``run_dir`` has no room for a saved replay memory
    (``checkpoint.memory``): a new one is written whole before the old one (``saved_bytes``)
    is deleted."""
    place = next(p for p in (Path(run_dir).absolute(), *Path(run_dir).absolute().parents) if p.exists())
    free = shutil.disk_usage(place).free + saved_bytes
    if need.memory_bytes > free:
        raise ConfigError(
            f"checkpoint.memory=true saves the replay memory ({_gb(need.memory_bytes)}) with each checkpoint, but "
            f"the disk under {place} has {_gb(free)} free; free some space, choose a smaller memory.size, or "
            "use checkpoint.memory=false")


def describe_device() -> str:
    """One line naming what JAX trains on, e.g. "gpu: NVIDIA H100 80GB HBM3 x1 (jax 0.6.2)"."""
    devices = jax.devices()
    first = devices[0]
    if first.platform == "cpu":
        return f"cpu: {os.cpu_count()} cores (jax {jax.__version__}; JAX sees no GPU)"
    return f"{first.platform}: {first.device_kind} x{len(devices)} (jax {jax.__version__})"

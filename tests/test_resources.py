"""dqn_jax.runner.resources: the run's memory need, from shapes, against what is free."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dqn_jax.config import ConfigError, MemoryConfig, NetworkConfig
from dqn_jax.core import replay
from dqn_jax.core.networks import make_network
from dqn_jax.runner.resources import (
    NETWORK_COPIES,
    USABLE_SHARE,
    Need,
    check_disk_for_memory,
    check_fits,
    estimate,
)

STATE = (105, 80, 2)


def tiny_network():
    return make_network(NetworkConfig(conv_features=[4, 8], conv_kernels=[3, 3], conv_strides=[4, 4],
                                      dense=[16]), 4)


def test_estimate_equals_the_bytes_really_allocated():
    cfg = MemoryConfig(size=600)
    network, sample = tiny_network(), np.zeros((1, *STATE), np.uint8)
    need = estimate(cfg, 4, STATE, np.uint8, 4, network, sample)
    memory = replay.init_memory(150, 4, STATE, np.uint8, 4)
    allocated = sum(leaf.nbytes for leaf in jax.tree.leaves(memory))
    params = network.init(jax.random.PRNGKey(0), sample)
    assert need.memory_bytes == allocated
    assert need.bytes_per_state == pytest.approx(allocated / 600)
    assert need.network_bytes == NETWORK_COPIES * sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    # the tutorial's states: 105 x 80 x 2 bytes, plus Q-values, action, reward, flags, error
    assert need.bytes_per_state == 16800 + 4 * 4 + 4 + 4 + 1 + 1 + 4 + 4 / 600


def test_a_memory_that_fits_passes_and_one_that_does_not_names_the_largest_size():
    need = Need(memory_bytes=16_830 * 200_000, bytes_per_state=16_830.0, network_bytes=600_000_000)
    check_fits(MemoryConfig(size=200_000), 8, need, free=(8_000_000_000, "host memory"))
    with pytest.raises(ConfigError) as err:
        check_fits(MemoryConfig(size=200_000), 8, need, free=(3_000_000_000, "host memory"))
    message = str(err.value)
    largest = int((USABLE_SHARE * 3e9 - 600e6) // 16_830) // 8 * 8
    assert f"the largest memory.size that fits is {largest}" in message
    assert largest % 8 == 0 and largest * 16_830 + 600e6 <= USABLE_SHARE * 3e9
    assert "memory.size=200000" in message and "3.00 GB free" in message and "\n" not in message
    with pytest.raises(ConfigError, match="the network alone does not fit"):
        check_fits(MemoryConfig(size=200_000), 8, need, free=(500_000_000, "gpu memory"))


def test_a_saved_memory_needs_room_on_the_disk_beside_the_one_it_replaces(tmp_path):
    import shutil

    run_dir = tmp_path / "runs" / "breakout" / "not-yet-made"  # checked where it will be
    free = shutil.disk_usage(tmp_path).free
    check_disk_for_memory(Need(free // 2, 1.0, 0), run_dir)
    too_big = Need(free + 10**9, 1.0, 0)
    with pytest.raises(ConfigError) as err:
        check_disk_for_memory(too_big, run_dir)
    message = str(err.value)
    assert message.startswith(f"checkpoint.memory=true saves the replay memory ({(free + 10**9) / 1e9:,.2f} GB)")
    assert f"the disk under {tmp_path}" in message and "checkpoint.memory=false" in message and "\n" not in message
    check_disk_for_memory(too_big, run_dir, saved_bytes=2 * 10**9)  # the saved one it replaces is deleted after

"""The replay memory saved beside the checkpoints (dqn_jax.runner.memory_file)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dqn_jax.core import replay
from dqn_jax.runner import memory_file
from dqn_jax.runner.memory_file import MemoryFile, end_episodes_at_newest_row

FIELDS = ("states", "q_values", "actions", "rewards", "end_life", "end_episode", "errors", "count")


def _filled(rows=6, games=3, count=8, seed=0) -> replay.ReplayMemory:
    """A circular memory of 4-frame stacks keeping frames, every table random."""
    rng = np.random.default_rng(seed)
    memory = replay.init_memory(rows, games, (5, 4, 4), np.uint8, 3, circular=True, stack=4)
    return memory.replace(
        states=rng.integers(0, 256, memory.states.shape, dtype=np.uint8),
        q_values=rng.normal(size=memory.q_values.shape).astype(np.float32),
        actions=rng.integers(0, 3, memory.actions.shape, dtype=np.int32),
        rewards=rng.normal(size=memory.rewards.shape).astype(np.float32),
        end_life=rng.random(memory.end_life.shape) < 0.3,
        end_episode=rng.random(memory.end_episode.shape) < 0.2,
        errors=rng.random(memory.errors.shape).astype(np.float32),
        count=np.int32(count),
    )


def test_a_saved_memory_comes_back_whole_with_its_newest_row_ending_the_episodes(tmp_path, monkeypatch):
    monkeypatch.setattr(memory_file, "CHUNK_BYTES", 100)  # several slices per table, a short last one
    memory = _filled(count=8)  # wrapped: the newest closed row is 7 % 6 = 1
    MemoryFile(tmp_path).save(40, memory)
    back = MemoryFile(tmp_path).load(40, jax.eval_shape(lambda: memory))
    assert (back.circular, back.stack) == (True, 4)
    for name in FIELDS:
        want = np.asarray(getattr(memory, name)).copy()
        if name == "end_episode":
            want[1] = True  # the games restart: no return or stack reaches across the resume
        got = np.asarray(getattr(back, name))
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_only_the_newest_whole_memory_is_kept_and_read(tmp_path):
    saved = MemoryFile(tmp_path)
    assert saved.steps() == [] and saved.load(10, _filled()) is None
    saved.save(10, _filled(seed=1))
    saved.save(20, _filled(seed=2))
    assert saved.steps() == [20]
    assert saved.load(10, _filled()) is None  # the checkpoint at 10 is older: its memory is gone
    (saved.directory / "30.tmp").mkdir()  # a save cut short
    assert saved.steps() == [20] and saved.load(30, _filled()) is None
    other_shape = replay.init_memory(6, 2, (5, 4, 4), np.uint8, 3, circular=True, stack=4)
    assert saved.load(20, other_shape) is None  # another config's memory is not read into this one
    saved.save(40, _filled(seed=4))
    assert sorted(p.name for p in saved.directory.iterdir()) == ["40"]  # the cut save went too


@pytest.mark.parametrize("count, row", [(0, None), (1, 0), (6, 5), (13, 0)])
def test_the_newest_closed_row_ends_every_episode(count, row):
    memory = _filled(count=count).replace(end_episode=np.zeros((6, 3), bool))
    ended = np.asarray(end_episodes_at_newest_row(memory).end_episode)
    want = np.zeros((6, 3), bool)
    if row is not None:
        want[row] = True
    np.testing.assert_array_equal(ended, want)


def test_saved_bytes_are_the_files_of_the_saved_memory(tmp_path):
    saved = MemoryFile(tmp_path)
    assert saved.saved_bytes() == 0
    memory = _filled()
    saved.save(10, memory)
    tables = sum(np.asarray(getattr(memory, name)).nbytes for name in FIELDS)
    assert tables < saved.saved_bytes() <= tables + 128 * len(FIELDS)  # each .npy adds a header of 128 bytes or so

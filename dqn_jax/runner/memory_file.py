"""The replay memory saved beside the checkpoints (``checkpoint.memory=true``).

A circular memory (DQN's) holds up to a million states a run has played: Dopamine saves
its replay buffer with each checkpoint, so a resumed run learns from what it had. Without
this a resume starts the memory empty and warms up again. The memory is written beside
the checkpoint of the same step, as one ``.npy`` file per field under
``<run_dir>/memory/<states>``: into ``<states>.tmp`` first, renamed when whole, so a
crash mid-save leaves nothing a resume would read; the memories of older steps are then
deleted (one is kept: gigabytes each). A resume reads the memory of exactly the step its
checkpoint restored, else starts empty and says why.

The games do not resume mid-episode (each restarts), so the restored memory's newest
row is marked an episode's end: no n-step return or frame stack reaches across it.
Large tables are written and read in slices of ``CHUNK_BYTES``, so a save needs no
second copy of the memory in RAM.
"""

from __future__ import annotations

import shutil
from dataclasses import fields
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dqn_jax.core.replay import ReplayMemory

CHUNK_BYTES = 256 * 2**20
_TMP = ".tmp"


def _array_fields(memory) -> list[str]:
    """The memory's array fields (``circular`` and ``stack`` are static: the config's)."""
    return [f.name for f in fields(memory) if f.metadata.get("pytree_node", True)]


def _rows_per_chunk(table) -> int:
    row_bytes = max(1, int(np.prod(table.shape[1:], dtype=np.int64)) * table.dtype.itemsize)
    return max(1, CHUNK_BYTES // row_bytes)


class MemoryFile:
    """The saved replay memory of one run directory."""

    def __init__(self, run_dir: str | Path):
        self.directory = Path(run_dir).absolute() / "memory"

    def steps(self) -> list[int]:
        """The steps of the complete saved memories, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(int(p.name) for p in self.directory.iterdir() if p.name.isdigit())

    def saved_bytes(self) -> int:
        """The bytes the saved memories take on disk."""
        if not self.directory.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.directory.rglob("*.npy"))

    def save(self, step: int, memory: ReplayMemory) -> Path:
        """Write ``memory`` as the memory at ``step`` and delete the older ones."""
        target, partial = self.directory / str(int(step)), self.directory / f"{int(step)}{_TMP}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name in _array_fields(memory):
            table = getattr(memory, name)
            out = np.lib.format.open_memmap(partial / f"{name}.npy", mode="w+", dtype=table.dtype, shape=table.shape)
            if table.ndim == 0:
                out[...] = np.asarray(jax.device_get(table))
            else:
                step_rows = _rows_per_chunk(table)
                for start in range(0, table.shape[0], step_rows):
                    out[start:start + step_rows] = jax.device_get(table[start:start + step_rows])
            out.flush()
            del out
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        for old in self.directory.iterdir():
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        return target

    def load(self, step: int, like: ReplayMemory) -> ReplayMemory | None:
        """The memory saved at ``step``, shaped as ``like`` (a memory or its ShapeDtypeStructs),
        with its newest row marked an episode's end; None when there is none of that shape."""
        source = self.directory / str(int(step))
        if not source.is_dir():
            return None
        tables = {}
        for name in _array_fields(like):
            path, want = source / f"{name}.npy", getattr(like, name)
            if not path.is_file():
                return None
            table = np.load(path, mmap_mode="r")
            if table.shape != tuple(want.shape) or table.dtype != want.dtype:
                return None
            tables[name] = _to_device(table)
        return end_episodes_at_newest_row(like.replace(**tables))


@partial(jax.jit, donate_argnums=0)
def _put_rows(table, chunk, start):
    return jax.lax.dynamic_update_slice_in_dim(table, chunk, start, axis=0)


def _to_device(table: np.ndarray) -> jax.Array:
    """A device copy of a (memory-mapped) table, filled a slice at a time in place: the
    memory is never in RAM twice."""
    if table.ndim == 0:
        return jnp.asarray(np.array(table))
    out = jnp.zeros(table.shape, table.dtype)
    step_rows = _rows_per_chunk(table)
    for start in range(0, table.shape[0], step_rows):
        out = _put_rows(out, np.array(table[start:start + step_rows]), start)
    return out


def end_episodes_at_newest_row(memory: ReplayMemory) -> ReplayMemory:
    """``memory`` with every game's episode ended at the newest closed row (none closed: unchanged)."""
    newest = (memory.count - 1) % memory.rows if memory.circular else memory.count - 1
    row = jnp.where(memory.count > 0, newest, memory.rows)  # out of range: nothing written
    return memory.replace(end_episode=jnp.asarray(memory.end_episode).at[row].set(True, mode="drop"))

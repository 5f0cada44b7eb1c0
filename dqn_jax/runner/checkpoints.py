"""Save and restore a training run with Orbax: train state, PRNG key and counters.

One checkpoint per learning cycle, named by its step (the states processed so far),
the newest ``keep`` kept. Each checkpoint has two items: ``state`` (the train state
pytree and the key's raw data) and ``meta`` (the counters and the key's kind, JSON).
Orbax writes a checkpoint into ``<step>.orbax-checkpoint-tmp`` and renames it when
complete, so a crash mid-save leaves no directory that :meth:`Checkpointer.restore`
would pick up. Saves are asynchronous: ``save`` returns once the arrays are copied
off the device, and the play loop goes on while the files are written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # Orbax's name for a checkpoint not yet complete


def _split_key(key) -> tuple[np.ndarray | jax.Array, dict[str, Any]]:
    """A key's raw uint32 data, and how to make the same kind of key from it."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):  # a typed key: jax.random.key
        return jax.random.key_data(key), {"typed": True, "impl": str(jax.random.key_impl(key))}
    return key, {"typed": False, "impl": None}  # a raw uint32 key: jax.random.PRNGKey


def _join_key(data: jax.Array, kind: dict[str, Any]):
    return jax.random.wrap_key_data(data, impl=kind["impl"]) if kind["typed"] else data


def _plain(value):
    """A JSON-ready Python number from a Python, numpy or JAX scalar."""
    return value.item() if hasattr(value, "item") else value


class Checkpointer:
    """The checkpoints of one run directory (``runs/<game>/<name>/checkpoints``)."""

    def __init__(self, directory: str | Path, keep: int = 3):
        self.directory = Path(directory).absolute()
        self.keep = int(keep)
        self._manager: ocp.CheckpointManager | None = None
        self._cleaned = False

    def _get_manager(self, create: bool) -> ocp.CheckpointManager | None:
        # Built on first use, and only for writing when the directory is missing, so
        # asking a run that never trained for its steps leaves nothing behind.
        if self._manager is None and (create or self.directory.is_dir()):
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.keep, create=True, enable_async_checkpointing=True)
            self._manager = ocp.CheckpointManager(
                self.directory, options=options, item_names=("state", "meta"))
        return self._manager

    def all_steps(self) -> list[int]:
        """The steps of the complete checkpoints, oldest first."""
        manager = self._get_manager(create=False)
        return sorted(manager.all_steps()) if manager is not None else []

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def save(self, step: int, train_state, key, counters: dict[str, int | float]) -> bool:
        """Start saving a checkpoint at ``step``; False if one at ``step`` or later exists.

        The caller may donate or overwrite ``train_state`` as soon as this returns.
        """
        manager = self._get_manager(create=True)
        if not self._cleaned:  # we are the writer: drop what a crashed save left behind
            for stale in self.directory.glob(f"*{_TMP_SUFFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
            self._cleaned = True
        key_data, key_kind = _split_key(key)
        meta = {
            "counters": {name: _plain(value) for name, value in counters.items()},
            "key": {**key_kind, "shape": list(key_data.shape)},
        }
        return bool(manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"train_state": train_state, "key": key_data}),
                meta=ocp.args.JsonSave(meta),
            ),
        ))

    def restore(self, abstract_train_state, step: int | None = None):
        """Return (train_state, key, counters) from ``step``, by default the latest.

        ``abstract_train_state`` is a freshly initialised train state (or its
        ShapeDtypeStructs): it gives the restored tree its structure and dtypes.
        """
        self.wait()  # a save of our own may still be writing
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        step = steps[-1] if step is None else int(step)
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint at step {step} in {self.directory}; steps saved: {steps}")
        manager = self._get_manager(create=False)
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        target = {
            "train_state": jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_train_state),
            "key": jax.ShapeDtypeStruct(tuple(meta["key"]["shape"]), np.uint32),
        }
        state = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
        return state["train_state"], _join_key(state["key"], meta["key"]), meta["counters"]

    def restore_newest_readable(self, abstract_train_state, say=print):
        """Like :meth:`restore` from the newest checkpoint that can be read.

        A newer one that cannot (corrupted on disk) is reported with ``say`` in one line
        and moved aside to ``<run_dir>/corrupt-checkpoints/<step>``, so that it is kept
        for a look but no longer counts as the latest. Returns None when none is readable.
        """
        for step in reversed(self.all_steps()):
            try:
                return self.restore(abstract_train_state, step)
            except Exception as err:  # Orbax raises many kinds for a damaged file
                aside = self._set_aside(step)
                reason = str(err).splitlines()[0][:160] if str(err) else ""
                say(f"dqn_jax: the checkpoint at {step} states cannot be read "
                    f"({type(err).__name__}: {reason}); moved it to {aside} and trying the one before")
        return None

    def _set_aside(self, step: int) -> Path:
        self.close()  # the manager caches the steps it has seen
        aside = self.directory.parent / "corrupt-checkpoints" / str(step)
        aside.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(aside, ignore_errors=True)
        shutil.move(str(self.directory / str(step)), aside)
        return aside

    def wait(self) -> None:
        """Block until every save started so far is complete on disk."""
        if self._manager is not None:
            self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release Orbax's threads."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""dqn_jax.runner.checkpoints with real Orbax checkpoints of a tiny Flax + Optax train state."""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from dqn_jax.runner.checkpoints import Checkpointer


class TinyState(struct.PyTreeNode):
    params: dict
    opt_state: optax.OptState
    updates: jax.Array
    apply_fn: object = struct.field(pytree_node=False, default=None)


def _optimizer():
    return optax.inject_hyperparams(optax.rmsprop)(
        learning_rate=1e-3, decay=0.9, eps=1e-10, initial_scale=1.0)


def fresh_state() -> TinyState:
    params = {"dense": {"kernel": jnp.zeros((3, 2)), "bias": jnp.zeros(2)}}
    return TinyState(params=params, opt_state=_optimizer().init(params), updates=jnp.int32(0))


def trained_state(seed: int, updates: int = 3) -> TinyState:
    """A state after a few real RMSProp updates, so every leaf has moved."""
    state, tx = fresh_state(), _optimizer()
    rng = np.random.default_rng(seed)
    params, opt_state = state.params, state.opt_state
    for _ in range(updates):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
        step, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, step)
    opt_state.hyperparams["learning_rate"] = jnp.float32(4e-4)  # as a control signal would
    return state.replace(params=params, opt_state=opt_state, updates=jnp.int32(updates))


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_empty_directory_has_no_steps_and_is_not_created(tmp_path):
    ckpt = Checkpointer(tmp_path / "run" / "checkpoints")
    assert ckpt.latest_step() is None
    assert ckpt.all_steps() == []
    with pytest.raises(FileNotFoundError):
        ckpt.restore(fresh_state())
    ckpt.close()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("typed_key", [False, True], ids=["PRNGKey", "typed-key"])
def test_round_trip_is_exact(tmp_path, typed_key):
    state = trained_state(seed=0)
    key = jax.random.key(42) if typed_key else jax.random.PRNGKey(42)
    key = jax.random.split(key)[1]
    counters = {"states": 12345, "episodes": 17, "loss": 0.125}
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(12345, state, key, counters)
        ckpt.wait()
    with Checkpointer(tmp_path) as ckpt:  # a new process would see the same
        assert ckpt.latest_step() == 12345
        restored, restored_key, restored_counters = ckpt.restore(fresh_state())
    assert isinstance(restored, TinyState)
    assert_trees_equal(restored, state)
    assert restored.updates.dtype == jnp.int32
    assert float(restored.opt_state.hyperparams["learning_rate"]) == np.float32(4e-4)
    assert restored_counters == counters
    assert type(restored_counters["states"]) is int
    assert restored_key.dtype == key.dtype
    if typed_key:
        np.testing.assert_array_equal(jax.random.key_data(restored_key), jax.random.key_data(key))
    else:
        np.testing.assert_array_equal(restored_key, key)
    # the restored key draws exactly what the saved one would
    np.testing.assert_array_equal(jax.random.uniform(restored_key, (3,)),
                                  jax.random.uniform(key, (3,)))


def test_keeps_newest_and_restores_a_chosen_step(tmp_path):
    key = jax.random.PRNGKey(0)
    with Checkpointer(tmp_path, keep=2) as ckpt:
        for step in (100, 200, 300):
            ckpt.save(step, trained_state(seed=step, updates=1), key, {"states": step})
        assert not ckpt.save(300, fresh_state(), key, {"states": 300})  # not twice
        ckpt.wait()
        assert ckpt.all_steps() == [200, 300]
        state, _, counters = ckpt.restore(fresh_state(), step=200)
        assert counters == {"states": 200}
        assert_trees_equal(state, trained_state(seed=200, updates=1))
        with pytest.raises(FileNotFoundError, match=r"steps saved: \[200, 300\]"):
            ckpt.restore(fresh_state(), step=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["200", "300"]


def test_saved_values_survive_donation_after_save(tmp_path):
    state = trained_state(seed=1)
    expected = jax.tree.map(np.array, state)

    @jax.jit
    def bump(s):
        return jax.tree.map(lambda x: x + 1, s)

    bump_donating = jax.jit(bump, donate_argnums=0)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, jax.random.PRNGKey(0), {})
        state = bump_donating(state)  # the play loop carries on with the buffers
        restored, _, _ = ckpt.restore(fresh_state())
    assert_trees_equal(restored, expected)


def test_an_interrupted_save_is_never_restored(tmp_path):
    """A process killed while Orbax writes leaves only Orbax's temporary directory: it is
    never restored, and the next save from this directory clears it. The leftover is made
    exactly as Orbax leaves it (a checkpoint written but not yet renamed), not by a race."""
    with Checkpointer(tmp_path / "elsewhere") as other:
        other.save(2, trained_state(seed=2), jax.random.PRNGKey(2), {"states": 2})
    with Checkpointer(tmp_path / "run") as ckpt:
        ckpt.save(1, trained_state(seed=1), jax.random.PRNGKey(1), {"states": 1})
    leftover = tmp_path / "run" / "2.orbax-checkpoint-tmp-1764590400123456"
    shutil.copytree(tmp_path / "elsewhere" / "2", leftover)
    next(p for p in leftover.rglob("*") if p.is_file() and p.stat().st_size > 0).unlink()  # half-written
    with Checkpointer(tmp_path / "run") as ckpt:
        assert ckpt.all_steps() == [1]
        state, _, counters = ckpt.restore(fresh_state())
        assert counters == {"states": 1}
        assert_trees_equal(state, trained_state(seed=1))
        ckpt.save(3, trained_state(seed=3), jax.random.PRNGKey(3), {"states": 3})
        ckpt.wait()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["1", "3"]


@pytest.mark.parametrize("damage", ["garbage", "emptied", "missing"])
def test_a_corrupt_newest_checkpoint_is_reported_set_aside_and_the_previous_used(tmp_path, damage):
    directory = tmp_path / "run" / "checkpoints"
    with Checkpointer(directory, keep=3) as checkpointer:
        for step, seed in ((10, 1), (20, 2)):
            checkpointer.save(step, trained_state(seed), jax.random.PRNGKey(step), {"states": step})
    files = [p for p in (directory / "20" / "state").rglob("*") if p.is_file()]
    for path in files:
        if damage == "garbage":
            path.write_bytes(np.random.default_rng(0).bytes(max(path.stat().st_size, 8)))
        elif damage == "emptied":
            path.write_bytes(b"")
        else:
            path.unlink()
    said = []
    with Checkpointer(directory, keep=3) as checkpointer:
        train_state, key, counters = checkpointer.restore_newest_readable(fresh_state(), say=said.append)
        assert checkpointer.all_steps() == [10]  # the damaged one no longer counts as the latest
        assert checkpointer.save(15, train_state, key, {"states": 15})  # so the run can save again
    assert counters == {"states": 10}
    expected = trained_state(1)
    for got, want in zip(jax.tree.leaves(train_state), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(key), np.asarray(jax.random.PRNGKey(10)))
    assert len(said) == 1 and "\n" not in said[0] and "checkpoint at 20 states cannot be read" in said[0]
    assert (tmp_path / "run" / "corrupt-checkpoints" / "20").is_dir()


def test_no_readable_checkpoint_gives_none(tmp_path):
    assert Checkpointer(tmp_path / "none").restore_newest_readable(fresh_state()) is None

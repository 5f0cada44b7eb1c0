"""The tutorial's sweep inside DQN (algorithm=sweep_dqn): the λ sweep against a plain
reference written here, the window's bounds and batches, then end to end."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqn_jax.algorithms import sweep_dqn
from dqn_jax.algorithms.hvass.targets import recompute_targets
from dqn_jax.config import ConfigError, validate
from dqn_jax.core import replay

# ------------------------------------------------------------------------ references


def reference_sweep(q, actions, rewards, done, count, discount, lam):
    """The λ recursion, game by game, row by row: (Q-values, errors) after the sweep."""
    q, errors = np.array(q, np.float64), np.zeros(actions.shape)
    value = q.max(axis=-1)  # V: the best Q-value of each row before the sweep
    for game in range(actions.shape[1]):
        for k in range(count - 2, -1, -1):
            a = actions[k, game]
            if done[k, game]:
                target = rewards[k, game]
            else:  # max_a Q[k+1] with row k+1 already updated (row count-1: its own Q-values)
                target = rewards[k, game] + discount * ((1 - lam) * value[k + 1, game] + lam * q[k + 1, game].max())
            errors[k, game] = abs(target - q[k, game, a])
            q[k, game, a] = target
    return q, errors


def random_memory(rng, rows=40, games=3, actions=4, count=33, circular=False, wrapped=0):
    memory = replay.init_memory(rows, games, (3,), np.float32, actions, circular=circular)
    k, g = np.meshgrid(np.arange(rows), np.arange(games), indexing="ij")
    states = np.stack([k, g, rng.normal(size=k.shape)], axis=-1).astype(np.float32)  # row, game, noise
    return memory.replace(
        states=jnp.asarray(states), q_values=jnp.asarray(rng.normal(size=(rows, games, actions)), jnp.float32),
        actions=jnp.asarray(rng.integers(0, actions, (rows, games)), jnp.int32),
        rewards=jnp.asarray(rng.choice([0.0, 1.0, -1.0], (rows, games), p=[0.7, 0.2, 0.1]), jnp.float32),
        end_life=jnp.asarray(rng.random((rows, games)) < 0.08), end_episode=jnp.asarray(rng.random((rows, games)) < 0.04),
        errors=jnp.asarray(rng.random((rows, games)), jnp.float32), count=jnp.int32(count + wrapped))


class Linear:
    """A stand-in network: Q(s) = s @ w."""

    @staticmethod
    def apply(params, states):
        return states @ params["w"]


def host(memory):
    return jax.tree_util.tree_map(np.asarray, memory)


# ------------------------------------------------------------------------ the λ sweep


@pytest.mark.parametrize("method", ["scan", "associative"])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.8, 1.0])
def test_the_lambda_sweep_matches_the_reference(method, lam):
    memory = host(random_memory(np.random.default_rng(int(lam * 10)), count=33))
    done = memory.end_life | memory.end_episode
    assert done[:32].any() and not done[:32].all()
    q, errors = reference_sweep(memory.q_values, memory.actions, memory.rewards, done, 33, 0.9, lam)
    swept, stats = recompute_targets(jax.tree_util.tree_map(jnp.asarray, memory), 0.9, method, lam)
    np.testing.assert_allclose(np.asarray(swept.q_values[:33]), q[:33], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(swept.errors[:32]), errors[:32], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(swept.errors[32]), 0.0)  # the last row bootstraps: error 0
    np.testing.assert_array_equal(np.asarray(swept.q_values[33:]), memory.q_values[33:])  # unused rows
    np.testing.assert_array_equal(np.asarray(swept.errors[33:]), memory.errors[33:])
    assert float(stats["q_max"]) == pytest.approx(q[:33].max(), abs=1e-5)


def test_lambda_zero_is_the_one_step_target():
    memory = host(random_memory(np.random.default_rng(5), count=40))
    done = memory.end_life | memory.end_episode
    swept, _ = recompute_targets(jax.tree_util.tree_map(jnp.asarray, memory), 0.99, "scan", 0.0)
    taken = np.take_along_axis(np.asarray(swept.q_values), memory.actions[..., None], -1)[..., 0]
    one_step = memory.rewards[:-1] + 0.99 * np.where(done[:-1], 0.0, memory.q_values[1:].max(-1))
    np.testing.assert_allclose(taken[:-1], one_step, rtol=1e-6)


@pytest.mark.parametrize("method", ["scan", "associative"])
def test_lambda_one_is_the_tutorials_sweep_to_the_bit(method):
    memory = host(random_memory(np.random.default_rng(7), rows=300, games=4, count=250))
    tutorial = recompute_targets(jax.tree_util.tree_map(jnp.asarray, memory), 0.97, method)
    with_lambda = recompute_targets(jax.tree_util.tree_map(jnp.asarray, memory), 0.97, method, lam=1.0)
    for old, new in zip(jax.tree_util.tree_leaves(tutorial), jax.tree_util.tree_leaves(with_lambda), strict=True):
        assert np.asarray(old).tobytes() == np.asarray(new).tobytes()


# ------------------------------------------------------------------- window and batches


@pytest.mark.parametrize("count, start, rows", [(7, 0, 7), (25, 13, 12), (95, 83, 12)])
def test_the_window_is_the_last_closed_rows_and_the_open_row(count, start, rows):
    """A 40-row circular memory, a window of 12 rows: fewer when fewer are closed; wrapped past the end."""
    memory = random_memory(np.random.default_rng(count), count=count, circular=True)
    params = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)), jnp.float32)}
    window, got_start, got_rows = sweep_dqn.gather_window(Linear, params, memory, 12, chunk_rows=5)
    assert (int(got_start), int(got_rows), int(window.count)) == (start, rows, rows + 1)
    index = (start + np.arange(rows + 1)) % 40  # closed rows, then the open row
    np.testing.assert_allclose(np.asarray(window.q_values[:rows + 1]),
                               np.asarray(memory.states)[index] @ np.asarray(params["w"]), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(window.actions[:rows + 1]), np.asarray(memory.actions)[index])
    np.testing.assert_array_equal(np.asarray(window.end_life[:rows + 1]), np.asarray(memory.end_life)[index])

    swept = window.replace(q_values=window.q_values + 100.0, errors=window.errors + 100.0)
    written = host(sweep_dqn.write_window(memory, swept, got_start, got_rows))
    changed = np.flatnonzero((written.q_values != np.asarray(memory.q_values)).any(axis=(1, 2)))
    assert sorted(changed) == sorted(index[:rows])  # the closed rows only, not the open row
    np.testing.assert_allclose(written.errors[index[:rows]], np.asarray(window.errors[:rows]) + 100.0)


def test_batches_come_from_the_refreshed_rows_with_their_targets():
    memory = random_memory(np.random.default_rng(3), count=55, circular=True)  # open row 15
    states, actions, targets = sweep_dqn.sample_window(jax.random.PRNGKey(0), memory, jnp.int32(45), jnp.int32(9),
                                                       4000)
    rows, games = np.asarray(states[:, 0]).astype(int), np.asarray(states[:, 1]).astype(int)
    assert set(rows) == set(range(5, 14))  # rows 45..53 as the count counts them; not the open row
    assert set(games) == {0, 1, 2}
    np.testing.assert_array_equal(np.asarray(actions), np.asarray(memory.actions)[rows, games])
    np.testing.assert_array_equal(np.asarray(targets), np.asarray(memory.q_values)[rows, games, np.asarray(actions)])


def test_prioritised_batches_come_from_the_window_by_its_stored_errors():
    memory = random_memory(np.random.default_rng(3), count=55, circular=True)  # open row 15, window rows 5..13
    draw = jax.jit(sweep_dqn.sample_window_prioritised, static_argnums=(4, 5, 6))
    (states, actions, targets), (row, game), weights = jax.device_get(
        draw(jax.random.PRNGKey(0), memory, jnp.int32(45), jnp.int32(9), 6000, 1.0, 1.0))
    np.testing.assert_array_equal(states[:, 0].astype(int), row)
    np.testing.assert_array_equal(states[:, 1].astype(int), game)
    np.testing.assert_array_equal(targets, np.asarray(memory.q_values)[row, game, actions])
    errors = np.asarray(memory.errors)
    priority = np.zeros_like(errors)
    priority[5:14] = errors[5:14] + 1e-6
    probability = priority[row, game] / priority.sum()
    np.testing.assert_allclose(weights, probability.min() / probability, rtol=1e-4)  # β = 1
    counts = np.bincount(row * 3 + game, minlength=priority.size).reshape(priority.shape)
    share = priority / priority.sum() * 6000
    assert counts[priority == 0].sum() == 0
    assert np.all(np.abs(counts - share) < 5 * np.sqrt(share) + 1)


def test_a_refresh_sweeps_the_re_estimated_window_in_place():
    memory = random_memory(np.random.default_rng(11), count=40, wrapped=30, circular=True)  # count 70, open row 30
    params = {"w": jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)), jnp.float32)}
    before = host(memory)
    refresh = sweep_dqn.Refresh(Linear, window_rows=20, games=3, discount=0.9, lam=0.7, method="scan")
    after, start, rows, stats = refresh(params, memory)
    assert (int(start), int(rows)) == (50, 20)
    index = (50 + np.arange(21)) % 40
    q = before.states[index] @ np.asarray(params["w"])
    done = before.end_life[index] | before.end_episode[index]
    expected, errors = reference_sweep(q, before.actions[index], before.rewards[index], done, 21, 0.9, 0.7)
    after = host(after)
    np.testing.assert_allclose(after.q_values[index[:20]], expected[:20], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after.errors[index[:20]], errors[:20], rtol=1e-5, atol=1e-5)
    untouched = np.setdiff1d(np.arange(40), index[:20])
    np.testing.assert_array_equal(after.q_values[untouched], before.q_values[untouched])
    assert float(stats["q_min"]) <= expected[:21].min() + 1e-5


# ------------------------------------------------------------------------ the config


@pytest.mark.parametrize("override, message", [
    ("algorithm.refresh_states=402", "multiple of algorithm.train_every=4"),
    ("algorithm.window=49800", "fit in memory.size=50000"),
    ("algorithm.window=8", "hold a row of 16 games"),
    ("algorithm.lam=1.5", "algorithm.lam=1.5 is out of range"),
])
def test_the_window_and_the_refresh_are_checked(override, message):
    from tests.conftest import compose_config

    cfg = compose_config(["experiment=cartpole_sweep_dqn"])
    validate(cfg)  # the recipe as written
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(["experiment=cartpole_sweep_dqn", override]))


# ------------------------------------------------------------------------ end to end


def test_it_trains_checkpoints_and_resumes(tmp_path):
    """A few hundred states of tiny Breakout, then the same command resumes: the state comes
    back whole from the checkpoint and the new memory is refreshed before its first step."""
    from tests.conftest import run_and_resume

    args = ["algorithm=sweep_dqn", "algorithm.warmup=100", "algorithm.report_every=200",
            "algorithm.refresh_states=40", "algorithm.window=64", "memory.batch_size=8", "logger=none"]
    steps, state, counters = run_and_resume(args, tmp_path)
    assert steps[-2:] == [400, 600]
    assert isinstance(state, sweep_dqn.SweepDqnState) and int(counters["states"]) == 600
    # 2 games: a step per 4 states after 100 (75 steps, then 25 after the resume's warm-up);
    # a refresh every 10 steps, and one first in each run's memory: 8 + 3
    assert (int(state.train.updates), int(state.refreshes)) == (100, 11)
    assert (int(state.recorded), int(state.credit), int(state.to_refresh)) == (200, 0, 5)
    # the last refresh at the resumed run's 21st step: 184 states recorded, 91 rows closed,
    # the window their last 32 (64 states of 2 games)
    assert (int(state.window_start), int(state.window_rows)) == (91 - 32, 32)
    params, refreshed = jax.tree_util.tree_leaves(state.train.params), jax.tree_util.tree_leaves(state.train.target_params)
    assert any(not np.array_equal(a, b) for a, b in zip(params, refreshed, strict=True))


def test_a_resume_with_its_saved_memory_refreshes_on_its_cadence(tmp_path):
    """checkpoint.memory=true: the resumed run learns on from the memory it had, with no warm-up
    and no extra first refresh: a refresh every 10 steps throughout, as in one run."""
    from tests.conftest import run_and_resume

    args = ["algorithm=sweep_dqn", "algorithm.warmup=100", "algorithm.report_every=200",
            "algorithm.refresh_states=40", "algorithm.window=64", "memory.batch_size=8", "logger=none",
            "checkpoint.memory=true"]
    steps, state, counters = run_and_resume(args, tmp_path)
    assert steps[-2:] == [400, 600] and int(counters["states"]) == 600
    # 2 games: a step per 4 states after 100: 75 steps, then 50 more; refreshes before steps
    # 1, 11, ..., 121: 13, the last one 5 steps ago
    assert (int(state.train.updates), int(state.refreshes)) == (125, 13)
    assert (int(state.recorded), int(state.credit), int(state.to_refresh)) == (600, 0, 5)

"""DQN and Double DQN: each piece against a plain reference written here, then end to end."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqn_jax.algorithms import dqn
from dqn_jax.core import replay
from dqn_jax.core.networks import make_network
from dqn_jax.core.training import create_train_state, make_optimizer
from tests.programs import Compiles, add

# ------------------------------------------------------------------------ references


def reference_targets(rewards, terminal, next_q_target, next_q_online, discount, double):
    out = []
    for r, done, q_t, q_o in zip(rewards, terminal, next_q_target, next_q_online, strict=True):
        if done:
            out.append(r)
            continue
        action = int(np.argmax(q_o)) if double else int(np.argmax(q_t))
        out.append(r + discount * q_t[action])
    return np.array(out, np.float32)


def reference_huber(x, delta):
    x = abs(x)
    return 0.5 * x * x if x <= delta else delta * (x - 0.5 * delta)


# ----------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("double", [False, True])
def test_td_targets_match_the_reference(double):
    rng = np.random.default_rng(0)
    b, a = 64, 4
    rewards = rng.choice([-1.0, 0.0, 1.0], b).astype(np.float32)
    terminal = rng.random(b) < 0.2
    q_target, q_online = rng.normal(size=(b, a)).astype(np.float32), rng.normal(size=(b, a)).astype(np.float32)
    got = dqn.td_targets(rewards, terminal, q_target, q_online, 0.99, double)
    np.testing.assert_allclose(got, reference_targets(rewards, terminal, q_target, q_online, 0.99, double),
                               rtol=1e-6)


def test_double_dqn_takes_the_online_networks_action_and_the_target_networks_value():
    q_target = np.array([[5.0, 1.0, 0.0]], np.float32)  # the target network prefers action 0
    q_online = np.array([[0.0, 2.0, 9.0]], np.float32)  # the online network prefers action 2
    args = (np.array([1.0], np.float32), np.array([False]), q_target, q_online, 0.5)
    assert float(dqn.td_targets(*args, double=False)[0]) == 1.0 + 0.5 * 5.0
    assert float(dqn.td_targets(*args, double=True)[0]) == 1.0 + 0.5 * 0.0


def test_huber_loss_matches_the_reference_on_both_sides_of_delta():
    q = np.array([[0.0, 1.0], [2.0, -3.0], [0.5, 0.5], [10.0, 0.0]], np.float32)
    actions = np.array([1, 1, 0, 0])
    targets = np.array([1.5, -3.2, 0.5, -2.0], np.float32)  # errors 0.5, 0.2, 0, 12
    loss, taken = dqn.huber_td_loss(q, actions, targets, 1.0)
    np.testing.assert_allclose(taken, [1.0, -3.0, 0.5, 10.0])
    expected = np.mean([reference_huber(t - g, 1.0) for t, g in zip(taken, targets, strict=True)])
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(dqn.huber_td_loss(q, actions, targets, 20.0)[0]) == pytest.approx(
        np.mean([0.5 * (t - g) ** 2 for t, g in zip(taken, targets, strict=True)]), rel=1e-6)


def circular_memory(steps=5, games=3, rows=12):
    """A circular memory after ``rows`` steps; a state holds (its position, its game)."""
    memory = replay.init_memory(steps, games, (2,), jnp.int32, 2, circular=True)
    for t in range(rows):
        states = np.stack([np.full(games, t), np.arange(games)], axis=1)
        memory = add(memory, states, np.zeros((games, 2)), np.full(games, t % 2),
                            np.full(games, float(t)), np.zeros(games, bool), np.full(games, t % 4 == 3),
                            reward_clip=100.0)
    return memory


def test_a_circular_memory_overwrites_its_oldest_row_and_keeps_counting():
    memory = circular_memory(steps=5, rows=12)
    assert int(memory.count) == 12
    # positions 7..11 are held, position p in row p % 5
    np.testing.assert_array_equal(np.asarray(memory.states)[:, 0, 0], [10, 11, 7, 8, 9])
    full = replay.init_memory(5, 3, (2,), jnp.int32, 2)  # the tutorial's memory: stops when full
    for t in range(7):
        full = add(full, np.full((3, 2), t), np.zeros((3, 2)), np.zeros(3, int), np.zeros(3),
                          np.zeros(3, bool), np.zeros(3, bool))
    assert int(full.count) == 5 and np.asarray(full.states)[:, 0, 0].tolist() == [0, 1, 2, 3, 4]


def test_transitions_are_consecutive_positions_of_one_game_drawn_uniformly():
    steps, games, rows = 5, 3, 12
    memory = circular_memory(steps, games, rows)
    # As while acting: the next decision is written into row `count` before a step.
    memory = replay.record_decision(memory, np.stack([np.full(games, rows), np.arange(games)], 1),
                                    np.zeros((games, 2)), np.zeros(games, int))
    sample = jax.jit(dqn.sample_transitions, static_argnums=2)
    batch = jax.device_get(sample(jax.random.PRNGKey(0), memory, 6000))
    position, game = batch.states[:, 0], batch.states[:, 1]
    np.testing.assert_array_equal(batch.next_states[:, 0], position + 1)  # the same game's next state
    np.testing.assert_array_equal(batch.next_states[:, 1], game)
    np.testing.assert_array_equal(batch.rewards, position.astype(np.float32))
    np.testing.assert_array_equal(batch.actions, position % 2)
    np.testing.assert_array_equal(batch.terminal, position % 4 == 3)
    # complete transitions: positions 8..11 (7 was overwritten by the decision at 12)
    assert set(position.tolist()) == {8, 9, 10, 11} and set(game.tolist()) == {0, 1, 2}
    counts = np.bincount((position - 8) * games + game, minlength=12)
    assert counts.min() > 6000 / 12 * 0.8 and counts.max() < 6000 / 12 * 1.2


def reference_n_step(position: int, n: int, discount: float, rewards, ends) -> tuple[float, bool]:
    """The n-step return from ``position`` of one game, written as a loop: (sum, cut short)."""
    total = 0.0
    for k in range(n):
        total += discount ** k * rewards[position + k]
        if ends[position + k]:
            return total, True
    return total, False


@pytest.mark.parametrize("n", [2, 3])
def test_n_step_transitions_sum_the_rewards_up_to_a_terminal_and_reach_n_rows_ahead(n):
    steps, games, rows, discount = 7, 3, 15, 0.9
    memory = circular_memory(steps, games, rows)  # position t: reward t, episode end when t % 4 == 3
    memory = replay.record_decision(memory, np.stack([np.full(games, rows), np.arange(games)], 1),
                                    np.zeros((games, 2)), np.zeros(games, int))
    sample = jax.jit(dqn.sample_transitions, static_argnums=(2, 3))
    batch = jax.device_get(sample(jax.random.PRNGKey(1), memory, 3000, n, discount))
    position = batch.states[:, 0]
    # complete: positions 9..15-n (8 was overwritten by the decision at 15; p + n <= 15)
    assert set(position.tolist()) == set(range(9, rows - n + 1))
    np.testing.assert_array_equal(batch.next_states[:, 0], position + n)
    np.testing.assert_array_equal(batch.next_states[:, 1], batch.states[:, 1])
    rewards, ends = np.arange(30, dtype=float), np.arange(30) % 4 == 3
    for p in sorted(set(position.tolist())):
        total, cut = reference_n_step(p, n, discount, rewards, ends)
        picked = position == p
        np.testing.assert_allclose(batch.rewards[picked], total, rtol=1e-6)
        assert (batch.terminal[picked] == cut).all()


def test_the_n_step_target_bootstraps_with_discount_to_the_n():
    """An Update with n = 3 regresses on sum + discount^3 V(s'), not discount V(s')."""
    update = dqn.Update(make_network_mlp(), make_optimizer(), batch_size=4, discount=0.5, huber_delta=None,
                        double=False, target_copy_every=1, n_step=3)
    assert update.n_step == 3 and update.huber_delta is None
    rewards, terminal = np.array([1.0, 2.0], np.float32), np.array([False, True])
    next_q = np.array([[4.0, 8.0], [4.0, 8.0]], np.float32)
    got = dqn.td_targets(rewards, terminal, next_q, None, update.discount ** update.n_step, False)
    np.testing.assert_allclose(got, [1.0 + 0.125 * 8.0, 2.0])


def test_the_squared_loss_is_the_squared_error_with_no_half_as_dopamines_mse():
    q = np.array([[0.0, 1.0], [10.0, 0.0]], np.float32)
    actions, targets = np.array([1, 0]), np.array([1.5, -2.0], np.float32)  # errors 0.5 and 12
    loss, _ = dqn.huber_td_loss(q, actions, targets, None)
    assert float(loss) == pytest.approx(np.mean([0.5 ** 2, 12.0 ** 2]), rel=1e-6)


def tiny_update(copy_every: int, double: bool = False):
    network = make_network_mlp()
    optimizer = make_optimizer(0.95, 0.01, 0.0, centered=True)
    state = create_train_state(network, jax.random.PRNGKey(0), jnp.zeros((1, 2)), optimizer)
    update = dqn.Update(network, optimizer, batch_size=8, discount=0.9, huber_delta=1.0, double=double,
                        target_copy_every=copy_every)
    return dqn.with_target(state), update


def make_network_mlp():
    from dqn_jax.config import NetworkConfig

    return make_network(NetworkConfig(name="mlp", dense=[8]), 2)


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_the_target_network_is_copied_every_c_steps_and_held_in_between():
    state, update = tiny_update(copy_every=3)
    memory = circular_memory(steps=6, games=2, rows=8)
    memory = memory.replace(states=memory.states.astype(jnp.float32))
    stats, key = dqn.Stats.zeros(), jax.random.PRNGKey(1)
    copied = leaves(state.params)
    for step in range(1, 8):
        before = leaves(state.params)
        state, stats, memory, key = update(state, stats, memory, key, jnp.float32(1e-2))
        params, target = leaves(state.params), leaves(state.target_params)
        assert any(not np.array_equal(p, q) for p, q in zip(params, before, strict=True))  # it learns
        if step % 3 == 0:
            copied = params
        for t, c in zip(target, copied, strict=True):
            np.testing.assert_array_equal(t, c)
    assert int(state.updates) == 7 and int(stats.count) == 7
    # the copy is the target's own buffer: donating the state again must not clash
    with Compiles() as compiles:
        state, stats, memory, key = update(state, stats, memory, key, jnp.float32(1e-2))
    assert compiles.of("_step") == 0  # compiled once, by the first step


def test_one_update_is_the_reference_gradient_step():
    """The parameters after one update are those of optax's RMSProp (the recipe's settings,
    the learning rate passed in) applied to jax.grad of a reference loss written here: the
    Double DQN target from the target network, the Huber loss of the action taken."""
    import optax

    state, update = tiny_update(copy_every=100, double=True)
    memory = circular_memory(steps=6, games=2, rows=8)
    memory = memory.replace(states=memory.states.astype(jnp.float32))
    key, learning_rate = jax.random.PRNGKey(3), 3e-3
    _, pick = jax.random.split(key)
    batch = jax.device_get(dqn.sample_transitions(pick, memory, 8))
    apply = update.network.apply
    params, target_params = jax.device_get(state.params), jax.device_get(state.target_params)
    targets = reference_targets(batch.rewards, batch.terminal, np.asarray(apply(target_params, batch.next_states)),
                                np.asarray(apply(params, batch.next_states)), 0.9, True)

    def reference_loss(p):
        q = apply(p, batch.states)[np.arange(8), batch.actions]
        error = jnp.abs(q - targets)
        return jnp.mean(jnp.where(error <= 1.0, 0.5 * error**2, error - 0.5))

    grads = jax.grad(reference_loss)(params)
    rmsprop = optax.rmsprop(learning_rate, decay=0.95, eps=0.01, initial_scale=0.0, eps_in_sqrt=True,
                            centered=True)
    steps, _ = rmsprop.update(grads, rmsprop.init(params), params)
    expected = optax.apply_updates(params, steps)
    state, stats, _, _ = update(state, dqn.Stats.zeros(), memory, key, jnp.float32(learning_rate))
    assert float(stats.loss) == pytest.approx(float(reference_loss(params)), rel=1e-5)
    for got, want, before in zip(leaves(state.params), leaves(expected), leaves(params), strict=True):
        assert not np.allclose(want, before)  # every parameter moves in one step
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_prioritised_batches_are_complete_transitions_drawn_by_their_stored_errors():
    steps, games, rows = 5, 3, 12
    memory = circular_memory(steps, games, rows)
    memory = replay.record_decision(memory, np.stack([np.full(games, rows), np.arange(games)], 1),
                                    np.zeros((games, 2)), np.zeros(games, int))
    # complete transitions: positions 8..11 in rows 3, 4, 0, 1; row 2 holds the open row
    errors = np.arange(steps * games, dtype=np.float32).reshape(steps, games)
    memory = memory.replace(errors=jnp.asarray(errors))
    sample = jax.jit(dqn.sample_prioritised, static_argnums=(2, 3, 4, 5, 6))
    batch, (row, game), weights = jax.device_get(sample(jax.random.PRNGKey(0), memory, 6000, 1, 1.0, 1.0, 0.5))
    position = batch.states[:, 0]
    np.testing.assert_array_equal(position % steps, row)  # the (row, game) it reports is where it drew
    np.testing.assert_array_equal(batch.states[:, 1], game)
    np.testing.assert_array_equal(batch.next_states[:, 0], position + 1)
    np.testing.assert_array_equal(batch.rewards, position.astype(np.float32))
    assert set(position.tolist()) == {8, 9, 10, 11}
    priority = errors + 1e-6
    priority[2] = 0.0  # the open row: not a transition
    expected = priority[row, game] / priority.sum()
    np.testing.assert_allclose(weights, (expected.min() / expected) ** 0.5, rtol=1e-5)
    counts = np.bincount(row * games + game, minlength=steps * games).reshape(steps, games)
    share = priority / priority.sum() * 6000
    assert np.all(np.abs(counts - share) < 5 * np.sqrt(share) + 1)


def test_a_prioritised_update_weights_its_loss_and_stores_the_errors_it_measured():
    """One prioritised step: optax's RMSProp on jax.grad of a reference loss whose terms are
    multiplied by the importance weights; |target - Q(s, a)| of the batch (before the step)
    replaces the stored errors where it drew, and nothing else in the memory changes."""
    import optax

    state, update = tiny_update(copy_every=100)
    update = dqn.Update(update.network, update.optimizer, batch_size=8, discount=0.9, huber_delta=1.0, double=False,
                        target_copy_every=100, priority_exponent=0.7, importance_exponent=0.4)
    memory = circular_memory(steps=6, games=2, rows=8)
    memory = memory.replace(states=memory.states.astype(jnp.float32),
                            errors=jnp.asarray(np.random.default_rng(0).random((6, 2)), jnp.float32))
    before = jax.device_get(memory)
    key, learning_rate = jax.random.PRNGKey(3), 3e-3
    _, pick = jax.random.split(key)
    batch, (row, game), weights = jax.device_get(dqn.sample_prioritised(pick, memory, 8, 1, 0.9, 0.7, 0.4))
    assert len(set(zip(row.tolist(), game.tolist(), strict=True))) > 3 and weights.min() < 1.0
    apply = update.network.apply
    params, target_params = jax.device_get(state.params), jax.device_get(state.target_params)
    next_q = np.asarray(apply(target_params, batch.next_states))
    targets = reference_targets(batch.rewards, batch.terminal, next_q, next_q, 0.9, False)

    def reference_loss(p):
        error = jnp.abs(apply(p, batch.states)[np.arange(8), batch.actions] - targets)
        return jnp.mean(weights * jnp.where(error <= 1.0, 0.5 * error**2, error - 0.5))

    rmsprop = optax.rmsprop(learning_rate, decay=0.95, eps=0.01, initial_scale=0.0, eps_in_sqrt=True,
                            centered=True)
    steps, _ = rmsprop.update(jax.grad(reference_loss)(params), rmsprop.init(params), params)
    expected = optax.apply_updates(params, steps)
    state, stats, memory, _ = update(state, dqn.Stats.zeros(), memory, key, jnp.float32(learning_rate))
    assert float(stats.loss) == pytest.approx(float(reference_loss(params)), rel=1e-5)
    for got, want in zip(leaves(state.params), leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    measured = np.abs(np.asarray(apply(params, batch.states))[np.arange(8), batch.actions] - targets)
    after = jax.device_get(memory)
    written = np.zeros((6, 2), bool)
    for r, g, e in zip(row, game, measured, strict=True):
        assert after.errors[r, g] == pytest.approx(e, rel=1e-5)
        written[r, g] = True
    np.testing.assert_array_equal(after.errors[~written], before.errors[~written])
    np.testing.assert_array_equal(after.states, before.states)


# ------------------------------------------------------------------------ end to end


@pytest.mark.parametrize("algorithm, encoding, priority, storage, saved_memory",
                         [("dqn", "motion_trace", 0.0, "states", False),
                          ("double_dqn", "frame_stack", 0.6, "frames", True)])
def test_each_algorithm_trains_checkpoints_and_resumes(tmp_path, algorithm, encoding, priority, storage,
                                                       saved_memory):
    """A few hundred states of real Breakout, then the same command resumes: the target
    network and the update count come back from the checkpoint. Double DQN draws its
    batches by priority from a memory of frames, saved with each checkpoint."""
    from dqn_jax.runner.memory_file import MemoryFile
    from tests.conftest import run_and_resume

    args = [f"algorithm={algorithm}", "algorithm.warmup=100", "algorithm.report_every=200",
            "algorithm.target_copy_states=28", "memory.batch_size=8", f"env.encoding={encoding}", "logger=none",
            f"algorithm.priority_exponent={priority}", f"memory.storage={storage}",
            f"checkpoint.memory={str(saved_memory).lower()}"]
    steps, state, counters = run_and_resume(args, tmp_path)
    assert steps[-2:] == [400, 600]
    assert isinstance(state, dqn.DqnState) and int(counters["states"]) == 600
    # the checkpoint holds DQN's whole state: its counters beside the networks. A resumed run
    # whose memory was not saved holds only the 200 states played since the resume
    assert (int(state.recorded), int(state.credit)) == ((600 if saved_memory else 200), 0)
    state = state.train
    assert isinstance(state, dqn.TargetTrainState)
    # 2 games: the warm-up ends after 100 states, then a step per 4 states (the first run:
    # 75 steps); the resumed run steps on (50 more), or warms up again when its memory
    # starts empty (25 more)
    assert int(state.updates) == 75 + (50 if saved_memory else 25)
    saved = MemoryFile(tmp_path / "runs" / "breakout" / "default")
    assert saved.steps() == ([600] if saved_memory else [])  # the newest only
    if saved_memory:  # 300 rows closed in all: 200 before the resume, 100 after
        assert int(np.load(saved.directory / "600" / "count.npy")) == 300
    # the last copy was at step 98, two steps ago: the target network lags the network
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(state.params), leaves(state.target_params),
                                                        strict=True))

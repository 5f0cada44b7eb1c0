import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqn_jax.algorithms.hvass import targets
from dqn_jax.core import replay
from tests.programs import Compiles, add, add_jit


def reference_sweep(q, actions, rewards, done, count, discount):
    """The tutorial's rule, one state at a time, per game."""
    q = np.array(q, np.float64)
    errors = np.zeros(q.shape[:2])
    for game in range(q.shape[1]):
        for k in range(count - 2, -1, -1):
            a = actions[k, game]
            if done[k, game]:
                target = rewards[k, game]
            else:
                target = rewards[k, game] + discount * q[k + 1, game].max()
            errors[k, game] = abs(target - q[k, game, a])
            q[k, game, a] = target
    return q, errors


def random_memory(rng, steps, games, actions, count, terminal_p=0.1):
    memory = replay.init_memory(steps, games, (2,), jnp.uint8, actions)
    return memory.replace(
        states=jnp.asarray(rng.integers(0, 256, (steps, games, 2)), jnp.uint8),
        q_values=jnp.asarray(rng.normal(size=(steps, games, actions)), jnp.float32),
        actions=jnp.asarray(rng.integers(0, actions, (steps, games)), jnp.int32),
        rewards=jnp.asarray(rng.choice([-1.0, 0.0, 0.0, 1.0], (steps, games)), jnp.float32),
        end_life=jnp.asarray(rng.random((steps, games)) < terminal_p / 2),
        end_episode=jnp.asarray(rng.random((steps, games)) < terminal_p / 2),
        errors=jnp.full((steps, games), 7.0, jnp.float32),  # stale values beyond count must survive
        count=jnp.int32(count),
    )


def copy(memory):
    """sweep donates its memory; keep the original for comparisons."""
    return jax.tree_util.tree_map(jnp.copy, memory)


# --------------------------------------------------------------------- storage


def test_add_reset_and_count():
    memory = replay.init_memory(3, 2, (4, 4, 2), jnp.uint8, 5)
    assert (memory.rows, memory.num_games, memory.capacity, memory.num_actions) == (3, 2, 6, 5)
    assert memory.states.dtype == jnp.uint8 and memory.q_values.dtype == jnp.float32
    for t in range(2):
        memory = add_jit(
            memory, jnp.full((2, 4, 4, 2), t + 1, jnp.uint8), jnp.full((2, 5), 0.5 * t),
            jnp.array([1, 2]), jnp.array([3.0, -0.25]), jnp.array([False, True]),
            jnp.array([True, False]),
        )
    assert int(memory.count) == 2
    np.testing.assert_array_equal(memory.states[1, 0, 0, 0], [2, 2])
    np.testing.assert_array_equal(memory.rewards[1], [1.0, -0.25])  # clipped to [-1, 1]
    np.testing.assert_array_equal(memory.actions[0], [1, 2])
    np.testing.assert_array_equal(memory.end_life[0], [False, True])
    np.testing.assert_array_equal(memory.end_episode[0], [True, False])
    assert int(memory.states[2].max()) == 0  # untouched row
    memory = replay.reset(memory)
    assert int(memory.count) == 0 and memory.states.shape == (3, 2, 4, 4, 2)


def test_add_to_full_memory_writes_nothing():
    memory = replay.init_memory(2, 1, (1,), jnp.float32, 2)
    for value in (1.0, 2.0, 3.0):
        memory = add(memory, jnp.full((1, 1), value), jnp.zeros((1, 2)), jnp.zeros(1, jnp.int32),
                       jnp.array([5.0]), jnp.zeros(1, bool), jnp.zeros(1, bool), reward_clip=2.0)
    assert int(memory.count) == 2
    np.testing.assert_array_equal(memory.states[:, 0, 0], [1.0, 2.0])
    np.testing.assert_array_equal(memory.rewards[:, 0], [2.0, 2.0])


def test_a_row_written_in_two_halves():
    memory = replay.init_memory(3, 2, (2,), jnp.uint8, 3)
    # No open row: the outcome is not written and count stays.
    memory = replay.record_outcome(memory, jnp.array([1.0, 1.0]), jnp.ones(2, bool), jnp.ones(2, bool), pending=False)
    assert int(memory.count) == 0 and not bool(memory.end_life.any()) and float(memory.rewards.sum()) == 0.0
    memory = replay.record_decision(memory, jnp.full((2, 2), 9, jnp.uint8), jnp.ones((2, 3)), jnp.array([2, 1]))
    assert int(memory.count) == 0  # decided, still open
    np.testing.assert_array_equal(memory.states[0], [[9, 9], [9, 9]])
    np.testing.assert_array_equal(memory.actions[0], [2, 1])
    memory = replay.record_outcome_jit(memory, jnp.array([-3.0, 0.5]), jnp.array([True, False]),
                                  jnp.array([False, False]), 1.0)
    assert int(memory.count) == 1
    np.testing.assert_array_equal(memory.rewards[0], [-1.0, 0.5])
    np.testing.assert_array_equal(memory.end_life[0], [True, False])


# ----------------------------------------------------------------------- sweep


def test_tutorial_worked_example():
    # NOOP (action 0) in state t estimated at 2.9; the step scores 4 points, stored as 1;
    # the best Q-value of state t+1 is 1.83; the new estimate is 1 + 0.97 * 1.83 = 2.7751.
    memory = replay.init_memory(2, 1, (1,), jnp.uint8, 4)
    memory = add(memory, jnp.zeros((1, 1)), jnp.array([[2.9, 0.5, 1.0, 2.0]]), jnp.array([0]),
                   jnp.array([4.0]), jnp.array([False]), jnp.array([False]))
    memory = add(memory, jnp.zeros((1, 1)), jnp.array([[1.83, 0.2, 1.1, -0.3]]), jnp.array([2]),
                   jnp.array([0.0]), jnp.array([False]), jnp.array([False]))
    for method in ("scan", "associative"):
        swept, _ = targets.recompute_targets(copy(memory), 0.97, method)
        assert float(swept.q_values[0, 0, 0]) == pytest.approx(2.7751, abs=1e-5)
        assert float(swept.errors[0, 0]) == pytest.approx(2.9 - 2.7751, abs=1e-5)
        np.testing.assert_allclose(swept.q_values[0, 0, 1:], [0.5, 1.0, 2.0])
        np.testing.assert_allclose(swept.q_values[1], memory.q_values[1])  # newest row untouched
        assert float(swept.errors[1, 0]) == 0.0


def reference_for(memory, count, discount):
    """:func:`reference_sweep` on a memory's own arrays (terminal = end of life or episode)."""
    done = np.asarray(memory.end_life | memory.end_episode)
    return reference_sweep(np.asarray(memory.q_values), np.asarray(memory.actions),
                           np.asarray(memory.rewards), done, count, discount)


@pytest.mark.parametrize("method", ["scan", "associative"])
@pytest.mark.parametrize("count", [0, 1, 2, 23, 64])
def test_sweep_matches_reference(method, count):
    rng = np.random.default_rng(count)
    memory = random_memory(rng, steps=64, games=3, actions=4, count=count)
    want_q, want_err = reference_for(memory, count, 0.97)
    swept, stats = targets.recompute_targets(copy(memory), 0.97, method)
    np.testing.assert_allclose(swept.q_values, want_q, atol=1e-5)
    np.testing.assert_allclose(swept.errors[:count], want_err[:count], atol=1e-5)
    np.testing.assert_array_equal(swept.errors[count:], 7.0)  # rows >= count left alone
    if count:
        used_q = want_q[:count]
        assert float(stats["q_min"]) == pytest.approx(used_q.min(), abs=1e-5)
        assert float(stats["q_max"]) == pytest.approx(used_q.max(), abs=1e-5)
        assert float(stats["q_mean"]) == pytest.approx(used_q.mean(), abs=1e-5)
        assert float(stats["q_std"]) == pytest.approx(used_q.std(), abs=1e-4)
        assert float(stats["error_mean"]) == pytest.approx(want_err[:count].mean(), abs=1e-5)
        assert float(stats["error_max"]) == pytest.approx(want_err[:count].max(), abs=1e-5)
        share = np.mean(np.asarray(memory.rewards)[:count] != 0)
        assert float(stats["reward_nonzero_share"]) == pytest.approx(share)


@pytest.mark.parametrize("method", ["scan", "associative"])
def test_long_chain_without_terminals(method):
    # Same shape as above, so no new compilation: every row's target depends on all later rows.
    rng = np.random.default_rng(5)
    memory = random_memory(rng, steps=64, games=3, actions=4, count=64, terminal_p=0.0)
    done = np.zeros((64, 3), bool)
    want_q, _ = reference_sweep(np.asarray(memory.q_values), np.asarray(memory.actions),
                                np.asarray(memory.rewards), done, 64, 0.999)
    swept, _ = targets.recompute_targets(copy(memory), 0.999, method)
    np.testing.assert_allclose(swept.q_values, want_q, atol=1e-4)


def test_sweep_compiles_once_for_every_fill_level():
    rng = np.random.default_rng(1)
    with Compiles() as compiles:
        for count in (3, 11, 17):
            targets.recompute_targets(random_memory(rng, 17, 2, 3, count), 0.97, "associative")
    # at most once each (none where an earlier test of this process compiled the same shapes)
    for stage in ("_prepare", "_write_targets", "_row_max_associative"):
        assert compiles.of(stage) <= 1, compiles.names
    assert compiles.of("_row_max_scan") == 0


# ------------------------------------------------------------ a memory of frames


def play_frame_stacks(rows, steps, games=3, stack=4, seed=0):
    """Random frames and episode ends played through the frame_stack encoding, recorded into a
    circular memory of whole states and one of frames: (states, frames, the stack acting
    built at each position)."""
    from types import SimpleNamespace

    from dqn_jax.core.encodings import make_encoding

    encoding = make_encoding(SimpleNamespace(kind="atari", encoding="frame_stack", stack_size=stack))
    rng = np.random.default_rng(seed)
    shape = (2, 3, stack)
    whole = replay.init_memory(rows, games, shape, jnp.uint8, 2, circular=True)
    frames = replay.init_memory(rows, games, shape, jnp.uint8, 2, circular=True, stack=stack)
    first = jnp.asarray(rng.integers(0, 256, (games, 2, 3)), jnp.uint8)
    carried, restart, built = encoding.start(first), np.ones(games, bool), []
    for t in range(steps + 1):
        image = first if t == 0 else jnp.asarray(rng.integers(0, 256, (games, 2, 3)), jnp.uint8)
        carried, states = encoding.encode(carried, image, restart)
        built.append(np.asarray(states))
        actions = jnp.asarray(rng.integers(0, 2, games), jnp.int32)
        whole = replay.record_decision(whole, states, jnp.zeros((games, 2)), actions)
        frames = replay.record_decision(frames, states, jnp.zeros((games, 2)), actions)
        if t == steps:
            break  # the open row: decided, not yet closed
        restart = rng.random(games) < 0.15
        outcome = (jnp.ones(games), jnp.zeros(games, bool), jnp.asarray(restart))
        whole, frames = replay.record_outcome(whole, *outcome), replay.record_outcome(frames, *outcome)
    return whole, frames, np.stack(built)


@pytest.mark.parametrize("steps", [7, 40])  # before the memory wraps, and after it wrapped three times
def test_a_memory_of_frames_rebuilds_the_stacks_acting_built(steps):
    whole, frames, built = play_frame_stacks(rows=12, steps=steps)
    assert frames.states.shape == (12, 3, 2, 3, 1) and frames.states.nbytes * 4 == whole.states.nbytes
    assert int(frames.count) == steps
    oldest = max(0, steps - 12 + 4)  # its 3 earlier frames are still held
    for game in range(3):
        positions = jnp.arange(oldest, steps + 1)
        got = np.asarray(replay.states_at(frames, positions, jnp.full(positions.shape, game)))
        np.testing.assert_array_equal(got, built[oldest:, game])
        np.testing.assert_array_equal(np.asarray(replay.states_at(whole, positions, jnp.full(positions.shape, game))),
                                      built[oldest:, game])
    # the checked stacks include ones an episode's start cut (its first frame repeated) and whole ones
    cut = [np.array_equal(s[..., 0], s[..., 1]) for s in built[oldest:].reshape(-1, 2, 3, 4)]
    assert 0 < sum(cut) < len(cut)


def test_transitions_from_a_memory_of_frames_are_those_of_whole_states():
    from dqn_jax.algorithms import dqn

    whole, frames, built = play_frame_stacks(rows=12, steps=40, seed=1)
    position = jnp.arange(40 - 12 + 4, 40 - 2 + 1).repeat(3)  # every complete 2-step transition held
    game = jnp.tile(jnp.arange(3), position.shape[0] // 3)
    for a, b in zip(dqn.gather_transitions(whole, position, game, 2, 0.9),
                    dqn.gather_transitions(frames, position, game, 2, 0.9), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # uniform batches draw only transitions whose earlier frames are still held
    batch = dqn.sample_transitions(jax.random.key(0), frames, 512, n_step=2, discount=0.9)
    held = {(built[p, g].tobytes(), built[p + 2, g].tobytes()) for p in range(40 - 12 + 4, 40 - 2 + 1)
            for g in range(3)}
    pairs = {(np.asarray(s).tobytes(), np.asarray(n).tobytes()) for s, n in zip(batch.states, batch.next_states,
                                                                                strict=True)}
    assert pairs <= held and len(pairs) > 0.8 * len(held)


def test_a_memory_of_frames_needs_a_circular_memory_of_stacks():
    with pytest.raises(ValueError, match="circular memory of 4-frame states"):
        replay.init_memory(8, 2, (2, 3, 4), jnp.uint8, 2, stack=4)
    with pytest.raises(ValueError, match="circular memory of 4-frame states"):
        replay.init_memory(8, 2, (2, 3, 2), jnp.uint8, 2, circular=True, stack=4)

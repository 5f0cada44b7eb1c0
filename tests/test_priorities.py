"""Prioritised sampling (dqn_jax.core.priorities) against plain references written here."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqn_jax.core import priorities, replay
from dqn_jax.core.priorities import FLOOR, UNSEEN
from tests.programs import add


def reference_priorities(errors, valid, exponent):
    """Entry by entry: (e + floor)^α; unseen entries the largest measured one's; invalid 0."""
    measured = [(e + FLOOR) ** exponent for e, v in zip(errors.ravel(), valid.ravel(), strict=True)
                if v and e >= 0]
    largest = max(measured, default=1.0)
    out = [0.0 if not v else largest if e < 0 else (e + FLOOR) ** exponent
           for e, v in zip(errors.ravel(), valid.ravel(), strict=True)]
    return np.array(out).reshape(errors.shape)


def reference_draw(priority, points):
    """The first index whose running sum (in float64) exceeds each point, by a loop."""
    running = np.cumsum(np.asarray(priority, np.float64).ravel())
    return [next(i for i, r in enumerate(running) if r > p) for p in points]


@pytest.mark.parametrize("exponent", [0.5, 1.0, 0.0])
def test_priorities_match_the_reference(exponent):
    errors = np.array([[0.5, UNSEEN, 2.0], [0.0, 3.0, UNSEEN], [9.0, 1.0, 0.25]], np.float32)
    valid = np.array([[True, True, True], [True, True, True], [False, True, True]])  # 9.0: not a transition
    got = np.asarray(priorities.priorities(jnp.asarray(errors), jnp.asarray(valid), exponent))
    np.testing.assert_allclose(got, reference_priorities(errors, valid, exponent), rtol=1e-6)
    assert got[2, 0] == 0.0 and got[0, 1] == pytest.approx((3.0 + FLOOR) ** exponent, rel=1e-6)


def test_a_memory_of_unseen_errors_draws_uniformly():
    got = priorities.priorities(jnp.full((4, 2), UNSEEN), jnp.ones((4, 2), bool), 0.6)
    np.testing.assert_array_equal(np.asarray(got), np.ones((4, 2)))


def test_draws_are_the_stratified_inverse_of_the_running_sum():
    priority = jnp.asarray([[3.0, 0.0], [1.0, 4.0], [0.0, 0.0], [2.0, 6.0]], jnp.float32)  # sum 16
    key, batch = jax.random.PRNGKey(7), 8
    index, probability = priorities.draw(key, priority, batch)
    # the same slice points, by hand: one uniform draw inside each eighth of the sum
    points = (np.arange(batch) + np.asarray(jax.random.uniform(key, (batch,)))) / batch * 16.0
    assert np.asarray(index).tolist() == reference_draw(priority, points)
    np.testing.assert_allclose(np.asarray(probability), np.asarray(priority).ravel()[np.asarray(index)] / 16.0)


def test_draws_follow_the_priorities_and_never_pick_a_zero():
    rng = np.random.default_rng(0)
    priority = rng.random(50).astype(np.float32) * (rng.random(50) < 0.7)
    draw = jax.jit(priorities.draw, static_argnums=2)
    keys = jax.random.split(jax.random.PRNGKey(1), 400)
    index = np.concatenate([np.asarray(draw(k, jnp.asarray(priority), 64)[0]) for k in keys])
    counts = np.bincount(index, minlength=50)
    assert counts[priority == 0].sum() == 0
    expected = priority / priority.sum() * index.size
    big = expected > 200  # a binomial's spread is about sqrt(expected): 5 of them at most
    assert np.all(np.abs(counts[big] - expected[big]) < 5 * np.sqrt(expected[big]) + 1)


def test_importance_weights_are_one_for_the_least_likely_draw():
    probability = jnp.asarray([0.1, 0.4, 0.05, 0.2])
    got = np.asarray(priorities.importance_weights(probability, 0.5))
    np.testing.assert_allclose(got, [(0.05 / p) ** 0.5 for p in [0.1, 0.4, 0.05, 0.2]], rtol=1e-6)
    assert got.max() == 1.0
    np.testing.assert_array_equal(np.asarray(priorities.importance_weights(probability, 0.0)), 1.0)


def test_a_circular_memory_marks_each_closed_row_unseen_and_the_tutorials_keeps_its_errors():
    for circular in (True, False):
        memory = replay.init_memory(4, 2, (1,), jnp.float32, 2, circular=circular)
        memory = memory.replace(errors=jnp.full((4, 2), 0.5))
        for t in range(3):
            memory = add(memory, np.full((2, 1), t), np.zeros((2, 2)), np.zeros(2, int), np.zeros(2),
                         np.zeros(2, bool), np.zeros(2, bool))
        expected = [[UNSEEN] * 2] * 3 + [[0.5] * 2] if circular else [[0.5] * 2] * 4
        np.testing.assert_array_equal(np.asarray(memory.errors), expected)


@pytest.mark.parametrize("overrides, message", [
    (["algorithm=dqn", "algorithm.priority_exponent=-0.5"], r"algorithm.priority_exponent=-0.5 is out of range"),
    (["algorithm=sweep_dqn", "algorithm.importance_exponent=-1"], r"algorithm.importance_exponent=-1.0 is out of range"),
    (["algorithm=dqn", "algorithm.priority_exponent=0.5", "algorithm.learner_devices=2"],
     r"algorithm.priority_exponent=0.5 needs algorithm.learner_devices=0"),
])
def test_the_settings_are_checked_in_one_line(tmp_path, overrides, message):
    from dqn_jax.config import ConfigError, validate
    from tests.conftest import compose_config

    validate(compose_config([*overrides[:1], "algorithm.priority_exponent=0.5"], tmp_path))  # allowed
    with pytest.raises(ConfigError, match=message):
        validate(compose_config(overrides, tmp_path))

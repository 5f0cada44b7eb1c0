"""dqn_jax.runner.faults: a learning cycle with a non-finite value stops the run."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from dqn_jax.runner.faults import Diverged, all_finite, check_cycle, first_non_finite

SIGNALS = {"learning_rate": 1e4, "loss_limit": 0.1}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("leaf", ["a", "c"])
def test_all_finite_matches_numpy_on_every_leaf(bad, leaf):
    rng = np.random.default_rng(0)
    tree = {"a": rng.normal(size=(4, 3)).astype(np.float32), "b": {"c": rng.normal(size=5)},
            "n": np.arange(3)}  # integer leaves are always finite
    assert all_finite(tree)
    (tree["a"] if leaf == "a" else tree["b"]["c"]).flat[2] = bad
    expected = all(np.isfinite(x).all() for x in (tree["a"], tree["b"]["c"]))
    assert not expected and all_finite(jnp.asarray(tree["a"])) == np.isfinite(tree["a"]).all()
    assert all_finite(tree) == expected


def test_first_non_finite_names_the_first_bad_value():
    assert first_non_finite({"a": 1.0, "b": float("nan"), "c": float("inf")}) == "b"
    assert first_non_finite({"a": 1.0, "b": -2.5}) is None


def test_check_cycle_passes_finite_values_and_names_cycle_states_and_signals():
    check_cycle(cycle=3, states=400, values={"batch loss": 0.5}, signals=SIGNALS,
                params={"w": np.ones(3)})
    with pytest.raises(Diverged) as err:
        check_cycle(cycle=3, states=400, values={"batch loss": float("nan")}, signals=SIGNALS)
    message = str(err.value)
    assert "\n" not in message
    for part in ("learning cycle 3", "400 states", "batch loss is nan", "learning rate 1e+04",
                 "loss limit 0.1", "schedule.learning_rate"):
        assert part in message, part


def test_check_cycle_catches_parameters_that_overflowed_with_a_finite_loss():
    with pytest.raises(Diverged, match="network parameters are not finite"):
        check_cycle(cycle=1, states=10, values={"batch loss": 0.2}, signals=SIGNALS,
                    params={"w": np.array([1.0, np.inf], np.float32)})

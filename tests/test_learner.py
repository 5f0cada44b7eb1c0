import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqn_jax.algorithms.hvass import optimise as L
from dqn_jax.core import replay
from dqn_jax.core.networks import MLPQNetwork
from dqn_jax.core.training import create_train_state, make_optimizer
from dqn_jax.runner.resources import describe_device
from tests.programs import Compiles

OBS, ACTIONS = 4, 3


def linear_network():
    """No hidden layer: q = x @ W + b, so the gradient is easy to write by hand."""
    return MLPQNetwork(num_actions=ACTIONS, dense=(), init_stddev=0.1)


def toy_memory(steps=40, games=4, count=40, seed=0, learnable=True):
    """Vector states whose Q-targets are a fixed linear function of the state."""
    rng = np.random.default_rng(seed)
    states = rng.normal(size=(steps, games, OBS)).astype(np.float32)
    w_true = rng.normal(size=(OBS, ACTIONS)).astype(np.float32)
    targets = states @ w_true if learnable else np.ones((steps, games, ACTIONS), np.float32)
    if not learnable:
        states[:] = 1.0
    memory = replay.init_memory(steps, games, (OBS,), jnp.float32, ACTIONS)
    return memory.replace(
        states=jnp.asarray(states), q_values=jnp.asarray(targets), count=jnp.int32(count),
        errors=jnp.asarray(rng.random((steps, games)), jnp.float32),
    )


def new_state(network, optimizer, seed=0):
    return create_train_state(network, jax.random.key(seed), jnp.zeros((1, OBS)), optimizer)


def test_q_loss_formula():
    def apply_fn(params, states):
        return states * params

    states = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    targets = jnp.array([[0.0, 0.0], [1.0, 1.0]])
    # Rows: (1 + 4) and (4 + 9); summed over actions, averaged over the batch.
    assert float(L.q_loss(1.0, apply_fn, states, targets)) == pytest.approx((5 + 13) / 2)


def test_update_matches_tf1_rmsprop_reference():
    network = linear_network()
    optimizer = make_optimizer(decay=0.9, eps=1e-10, initial_scale=1.0)
    state = new_state(network, optimizer)
    w = np.array(state.params["params"]["Dense_0"]["kernel"], np.float64)
    b = np.array(state.params["params"]["Dense_0"]["bias"], np.float64)
    ms_w, ms_b = np.ones_like(w), np.ones_like(b)  # TF1 starts the accumulator at 1.0
    learner = L.Learner(network, optimizer, batch_size=8, error_threshold=0.1,
                             min_high_share=0.5)
    step = jax.jit(learner.step, donate_argnums=0)
    rng = np.random.default_rng(1)
    for lr in (1e-2, 3e-3, 5e-2):
        x = rng.normal(size=(8, OBS)).astype(np.float32)
        y = rng.normal(size=(8, ACTIONS)).astype(np.float32)
        diff = x @ w + b - y
        want_loss = np.mean(np.sum(diff**2, axis=1))
        g_w, g_b = 2 * x.T @ diff / 8, 2 * diff.sum(0) / 8
        ms_w = 0.9 * ms_w + 0.1 * g_w**2
        ms_b = 0.9 * ms_b + 0.1 * g_b**2
        w = w - lr * g_w / np.sqrt(ms_w + 1e-10)
        b = b - lr * g_b / np.sqrt(ms_b + 1e-10)
        state, loss = step(state, jnp.asarray(x), jnp.asarray(y), jnp.float32(lr))
        assert float(loss) == pytest.approx(want_loss, rel=1e-5)
        np.testing.assert_allclose(state.params["params"]["Dense_0"]["kernel"], w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.params["params"]["Dense_0"]["bias"], b, rtol=1e-5, atol=1e-6)
    assert int(state.updates) == 3
    assert float(state.opt_state.hyperparams["learning_rate"]) == pytest.approx(5e-2)


def toy_learner(loop: str, chunk: int, loss_window: int = 100):
    """The linear network's learner: batches of 16, error threshold 0.5, half high-error."""
    network, optimizer = linear_network(), make_optimizer()
    learner = L.Learner(network, optimizer, batch_size=16, error_threshold=0.5,
                             min_high_share=0.5, loss_window=loss_window, chunk=chunk, loop=loop)
    return network, optimizer, learner


@pytest.mark.parametrize("loop", ["device", "host"])
def test_optimise_stop_rules_and_compile_once(loop):
    network, optimizer, learner = toy_learner(loop, chunk=8)
    memory = toy_memory()  # 160 used states: 10 iterations per epoch
    state, key = new_state(network, optimizer), jax.random.key(0)

    calls = []
    with Compiles() as compiles:
        state, key, first = learner.optimise(state, memory, key, learning_rate=1e-3, loss_limit=0.0,
                                             max_epochs=3.0, progress=lambda *a: calls.append(a))
        state, key, second = learner.optimise(state, memory, key, learning_rate=3e-4, loss_limit=1e9,
                                              max_epochs=5.0, min_epochs=1.5)
    assert (first.iterations, first.max_iterations) == (30, 30)
    assert first.epochs == pytest.approx(3.0)
    assert [c[0] for c in calls] == [8, 16, 24, 30] and all(c[1] == 30 for c in calls)
    assert first.high_error_share == pytest.approx(float(np.mean(np.asarray(memory.errors) >= 0.5)))
    assert second.iterations == 15 and second.max_iterations == 50
    assert int(state.updates) == 30 + 15
    compiled, other = ("_chunk", "_one_iteration") if loop == "device" else ("_one_iteration", "_chunk")
    assert compiles.of(compiled) == 1  # once, whatever the learning rate, loss limit or epochs
    assert compiles.of(other) == 0  # the other loop was never compiled


@pytest.mark.parametrize("loop", ["device", "host"])
def test_mean_loss_over_a_partly_filled_window(loop):
    network, optimizer, learner = toy_learner(loop, chunk=64)
    memory = toy_memory(learnable=False, count=20)  # every state and target identical
    state = new_state(network, optimizer)
    want = float(L.q_loss(state.params, network.apply, memory.states[0], memory.q_values[0]))
    # With a zero learning rate every batch loss is the same, so their mean is that loss.
    state, _, res = learner.optimise(state, memory, jax.random.key(0), learning_rate=0.0,
                                     loss_limit=0.0, max_epochs=2.0)
    assert res.iterations == 10
    assert res.mean_loss == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("loop", ["device", "host"])
def test_loss_decreases_and_limit_stops_early(loop):
    network, optimizer, learner = toy_learner(loop, chunk=32, loss_window=10)
    memory = toy_memory()
    state, key = new_state(network, optimizer), jax.random.key(3)
    state, key, first = learner.optimise(state, memory, key, learning_rate=2e-2, loss_limit=0.0,
                                         max_epochs=1.0)
    state, key, last = learner.optimise(state, memory, key, learning_rate=2e-2, loss_limit=0.05,
                                        max_epochs=100.0)
    assert last.mean_loss < 0.05 < first.mean_loss
    assert 10 <= last.iterations < last.max_iterations == 1000


def test_empty_memory_does_nothing():
    network = linear_network()
    optimizer = make_optimizer()
    learner = L.Learner(network, optimizer, 16, 0.1, 0.5)
    state = new_state(network, optimizer)
    with Compiles() as compiles:
        state, _, res = learner.optimise(state, toy_memory(count=0), jax.random.key(0),
                                         learning_rate=1e-3, loss_limit=0.1, max_epochs=5.0)
    assert res.iterations == 0 and compiles.of("_chunk") + compiles.of("_one_iteration") == 0


def test_device_and_host_loops_agree():
    network = linear_network()
    optimizer = make_optimizer()
    results = {}
    for loop in ("device", "host"):
        learner = L.Learner(network, optimizer, 16, 0.5, 0.5, loss_window=10, chunk=16, loop=loop)
        state, key, res = learner.optimise(new_state(network, optimizer), toy_memory(), jax.random.key(4),
                                           learning_rate=1e-2, loss_limit=0.3, max_epochs=20.0)
        results[loop] = (state, key, res)
    (s_dev, k_dev, r_dev), (s_host, k_host, r_host) = results["device"], results["host"]
    assert r_dev.iterations == r_host.iterations
    assert r_dev.mean_loss == pytest.approx(r_host.mean_loss, rel=1e-4)
    np.testing.assert_array_equal(jax.random.key_data(k_dev), jax.random.key_data(k_host))
    np.testing.assert_allclose(s_dev.params["params"]["Dense_0"]["kernel"],
                               s_host.params["params"]["Dense_0"]["kernel"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("loop", ["device", "host"])
def test_stop_ends_the_optimise_loop_early_with_a_usable_state(loop):
    """Ctrl-C while learning: the loop ends at the next check and the state stays usable."""
    network, optimizer, learner = toy_learner(loop, chunk=4)
    memory = toy_memory()  # 160 used states: 10 iterations per epoch
    state = new_state(network, optimizer)
    checks = []
    state, _, res = learner.optimise(state, memory, jax.random.key(0), learning_rate=1e-3, loss_limit=0.0,
                                     max_epochs=3.0, stop=lambda: checks.append(1) or len(checks) >= 2)
    # The loop asks after every iteration (host) or chunk (device) and ends at the first
    # yes; on the device the one chunk queued behind the last asked runs too.
    assert len(checks) == 2
    asked = len(checks) if loop == "host" else 4 * (len(checks) + 1)
    assert res.iterations == asked and res.max_iterations == 30
    assert int(state.updates) == res.iterations  # not donated away: still a live train state


def test_describe_device_names_the_backend():
    line = describe_device()
    assert line.startswith(f"{jax.default_backend()}: ") and jax.__version__ in line
    assert "\n" not in line
    if jax.default_backend() == "cpu":
        assert f"{os.cpu_count()} cores" in line and "no GPU" in line

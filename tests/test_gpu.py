"""The GPU code paths, run on the GPU and compared with the same computation on the CPU.

Collected by ``make test-gpu`` (``-m gpu``); every test skips where JAX sees no GPU. The
same paths are forced on the CPU at small size in test_memory, test_learner and
test_networks (device loop, associative sweep, the per-cycle sampler, bf16 programs).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dqn_jax.algorithms.hvass import optimise as L
from dqn_jax.algorithms.hvass import sampling, targets
from dqn_jax.config import NetworkConfig
from dqn_jax.core.networks import make_network
from dqn_jax.core.training import create_train_state, make_optimizer
from tests.programs import compute_dtypes
from tests.test_learner import linear_network, new_state, toy_memory
from tests.test_memory import random_memory, reference_for


def _first_gpu():
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return None


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_first_gpu() is None, reason="JAX sees no GPU")]


@pytest.fixture
def gpu():
    return _first_gpu()


@pytest.fixture
def cpu():
    return jax.devices("cpu")[0]


def on(device, tree):
    return jax.device_put(tree, device)


def test_device_optimise_loop_on_the_gpu_matches_the_host_loop_on_the_cpu(gpu, cpu):
    network, optimizer = linear_network(), make_optimizer()
    out = {}
    for where, loop in ((gpu, "device"), (cpu, "host")):
        learner = L.Learner(network, optimizer, 16, 0.5, 0.5, loss_window=10, chunk=16, loop=loop)
        with jax.default_device(where):
            state, key, res = learner.optimise(on(where, new_state(network, optimizer)),
                                               on(where, toy_memory()), on(where, jax.random.key(4)),
                                               learning_rate=1e-2, loss_limit=1.0, max_epochs=20.0)
        out[loop] = (jax.device_get(state.params), res)
        assert state.params["params"]["Dense_0"]["kernel"].devices() == {where}
    (p_dev, r_dev), (p_host, r_host) = out["device"], out["host"]
    # The loss limit stops both at the same batch (145 of 200 on the CPU).
    assert r_dev.iterations == r_host.iterations < r_dev.max_iterations
    assert r_dev.mean_loss == pytest.approx(r_host.mean_loss, rel=1e-3)
    np.testing.assert_allclose(p_dev["params"]["Dense_0"]["kernel"], p_host["params"]["Dense_0"]["kernel"],
                               rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("count", [1, 40, 512])
def test_associative_sweep_on_the_gpu_matches_the_reference(gpu, count):
    rng = np.random.default_rng(count)
    memory = random_memory(rng, steps=512, games=8, actions=4, count=count)
    want_q, want_err = reference_for(memory, count, 0.97)
    swept, stats = targets.recompute_targets(on(gpu, memory), 0.97, "associative")
    assert swept.q_values.devices() == {gpu}
    np.testing.assert_allclose(swept.q_values, want_q, atol=1e-4)
    np.testing.assert_allclose(swept.errors[:count], want_err[:count], atol=1e-4)
    assert float(stats["q_max"]) == pytest.approx(want_q[:count].max(), abs=1e-4)


def test_sampler_on_the_gpu_draws_the_cpus_batches(gpu, cpu):
    """Same keys, same plan: threefry and the draw are exact, so the batches are identical."""
    rng = np.random.default_rng(0)
    errors = jnp.asarray(rng.exponential(0.1, 200_000), jnp.float32)
    used = jnp.asarray(np.arange(200_000) < 150_000)
    keys = jax.random.split(jax.random.key(3), 64)
    draw = jax.jit(jax.vmap(sampling.sample_batch, in_axes=(0, None, None)), static_argnums=2)
    prepare = jax.jit(sampling.prepare_sampling, static_argnums=4)
    out = []
    for where in (gpu, cpu):
        plan = prepare(on(where, errors), on(where, used), 0.1, 0.5, 128)
        out.append(jax.device_get((plan, draw(on(where, keys), plan, 128))))
    (plan_g, idx_g), (plan_c, idx_c) = out
    np.testing.assert_array_equal(plan_g.order, plan_c.order)
    np.testing.assert_array_equal(plan_g.quota, plan_c.quota)
    np.testing.assert_array_equal(idx_g, idx_c)
    assert all(len(set(b.tolist())) == 128 for b in idx_g)


@pytest.mark.parametrize("dtype, want", [("bfloat16", "bf16"), ("float32", "f32")])
def test_bfloat16_runs_in_bfloat16_on_the_gpu(gpu, dtype, want):
    """The compiled GPU program (what cuDNN and cuBLAS run), forward and backward."""
    network = make_network(NetworkConfig(dtype=dtype), num_actions=4)
    images = jax.ShapeDtypeStruct((128, 105, 80, 2), jnp.uint8)
    params = jax.eval_shape(network.init, jax.random.key(0), images)
    grad = jax.jit(jax.grad(L.q_loss), static_argnums=1)
    with jax.default_device(gpu):
        compiled = grad.lower(params, network.apply, images, jnp.zeros((128, 4))).compile()
    types = compute_dtypes(compiled.as_text())
    # 3 convolutions + 5 dense layers forward, and their gradients: many products, all in `want`.
    assert len(types) >= 8 and set(types) == {want}, types


def test_hvass_update_on_the_gpu_matches_the_cpu(gpu, cpu):
    """One update of the tutorial's network: the same loss and parameters as the CPU's
    (up to TF32, which XLA may use for float32 products on the GPU)."""
    network = make_network(NetworkConfig(), num_actions=4)
    optimizer = make_optimizer()
    rng = np.random.default_rng(1)
    states = rng.integers(0, 256, (32, 105, 80, 2)).astype(np.uint8)
    targets = rng.normal(size=(32, 4)).astype(np.float32)
    out = []
    for where in (gpu, cpu):
        with jax.default_device(where):
            state = create_train_state(network, jax.random.key(0), jnp.zeros((1, 105, 80, 2), jnp.uint8),
                                         optimizer)
            learner = L.Learner(network, optimizer, 32, 0.1, 0.5)
            state, loss = jax.jit(learner.step)(state, on(where, states), on(where, targets), jnp.float32(1e-4))
        out.append((float(loss), np.asarray(state.params["params"]["Dense_4"]["kernel"])))
    (loss_gpu, kernel_gpu), (loss_cpu, kernel_cpu) = out
    assert loss_gpu == pytest.approx(loss_cpu, rel=2e-2)
    np.testing.assert_allclose(kernel_gpu, kernel_cpu, atol=1e-4)

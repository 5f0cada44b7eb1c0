"""core/training: the optimisers every gradient step uses, against plain references."""

from __future__ import annotations

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dqn_jax.config import CHOICES, OptimizerConfig
from dqn_jax.core.training import OPTIMIZERS, optimizer_from, set_learning_rate


def reference_adam(grads, lr, b1, b2, eps):
    """Adam as Kingma & Ba wrote it, bias-corrected, eps added to the root: the steps taken."""
    m = v = np.zeros_like(grads[0])
    param, out = np.zeros_like(grads[0]), []
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        param = param - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(param.copy())
    return out


def test_adam_matches_the_reference_with_dopamines_epsilon():
    settings = OptimizerConfig(name="adam", eps=1.5e-4, b1=0.9, b2=0.999)
    optimizer = optimizer_from(settings)
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=5).astype(np.float32) * 10 ** rng.uniform(-4, 0) for _ in range(6)]
    params = jnp.zeros(5)
    state = set_learning_rate(optimizer.init(params), 6.25e-5)
    for g, want in zip(grads, reference_adam(grads, 6.25e-5, 0.9, 0.999, 1.5e-4), strict=True):
        updates, state = optimizer.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params, want, rtol=2e-5, atol=1e-10)


def test_rmsprop_is_the_default_and_the_names_agree_with_the_config():
    """The default section is the tutorial's RMSProp (TF1: the accumulator starts at 1):
    a first step of lr * g / sqrt(0.9 + 0.1 g^2 + 1e-10)."""
    rms = optimizer_from(OptimizerConfig())
    g = jnp.array([0.5, -2.0])
    updates, _ = rms.update(g, set_learning_rate(rms.init(jnp.zeros(2)), 1e-3), jnp.zeros(2))
    np.testing.assert_allclose(updates, -1e-3 * np.asarray(g) / np.sqrt(0.9 + 0.1 * np.asarray(g) ** 2 + 1e-10),
                               rtol=1e-6)
    assert CHOICES["optimizer.name"] == OPTIMIZERS
    with pytest.raises(ValueError, match="optimizer.name='sgd'; choose one of rmsprop, adam"):
        optimizer_from(SimpleNamespace(name="sgd"))

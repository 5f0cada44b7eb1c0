"""The train state and the optimiser: what every algorithm's gradient step updates.

The optimiser is RMSProp as TensorFlow 1 defined it (the tutorial's) or Adam, with the
learning rate held in the optimiser state (``optax.inject_hyperparams``) so the schedule
can change it every cycle without recompiling.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax


def make_optimizer(decay: float = 0.9, eps: float = 1e-10, initial_scale: float = 1.0,
                   centered: bool = False):
    """RMSProp with TF1 semantics: ms = decay*ms + (1-decay)*g^2, step = -lr*g/sqrt(ms+eps).

    The accumulator starts at ``initial_scale`` (TF1: 1.0) and there is no momentum.
    ``centered`` divides by sqrt(ms - mg^2 + eps) instead, mg the mean gradient (the
    Nature DQN's RMSProp). The learning rate lives in ``opt_state.hyperparams["learning_rate"]``.
    """
    return optax.inject_hyperparams(optax.rmsprop)(
        learning_rate=1e-3, decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=True,
        centered=centered,
    )


def make_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """Adam (Kingma & Ba 2015) as Optax has it: ``eps`` is added to the root of the second moment."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, b1=b1, b2=b2, eps=eps)


OPTIMIZERS = ("rmsprop", "adam")


def optimizer_from(settings):
    """The optimiser an ``optimizer`` config section names (``settings.name``: rmsprop or adam)."""
    if settings.name == "adam":
        return make_adam(settings.b1, settings.b2, settings.eps)
    if settings.name == "rmsprop":
        return make_optimizer(settings.decay, settings.eps, settings.initial_scale, settings.centered)
    raise ValueError(f"optimizer.name={settings.name!r}; choose one of {', '.join(OPTIMIZERS)}")


@flax.struct.dataclass
class TrainState:
    params: dict  # the network's variables, as ``network.init`` returns them: apply(params, x)
    opt_state: optax.OptState
    updates: jax.Array  # int32 scalar: gradient steps taken


def create_train_state(network: nn.Module, key, sample_input, optimizer) -> TrainState:
    """Initialise the network's variables from ``key`` and the optimiser state for them."""
    params = network.init(key, sample_input)
    return TrainState(params=params, opt_state=optimizer.init(params), updates=jnp.zeros((), jnp.int32))


def set_learning_rate(opt_state, learning_rate):
    """A copy of an ``inject_hyperparams`` state with a new learning rate."""
    hyper = dict(opt_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(learning_rate, hyper["learning_rate"].dtype)
    return opt_state._replace(hyperparams=hyper)

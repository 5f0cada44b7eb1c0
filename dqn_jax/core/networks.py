"""Q-networks as Flax linen modules: state in, one Q-value per action out.

Three shapes, chosen by ``config.NetworkConfig.name``:

* ``hvass``: the tutorial's network, small 3x3 convolutions with SAME padding followed
  by a stack of wide dense layers (most parameters sit in the first dense layer);
* ``nature``: a Nature-DQN style CNN (VALID padding), layer sizes from the config;
* ``mlp``: dense layers only, for vector observations such as CartPole's.

Images arrive as uint8 and become floats inside the network, so the replay memory
never holds a float copy. ``input_scale`` says how: "unit" divides them by 255 (values
in [0, 1], the usual choice and the default), "raw" keeps 0-255 as the tutorial fed them. ``dtype`` sets the compute precision; parameters are
kept in float32 and the Q-values are always returned as float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _kernel_init(name: str, stddev: float):
    """The weights' initialiser: "truncated_normal" with the given stddev, or Flax's default
    (lecun normal, the stddev from each layer's fan-in) if stddev <= 0; "xavier_uniform"
    (Glorot & Bengio 2010, the one Dopamine's networks use)."""
    if name == "xavier_uniform":
        return nn.initializers.xavier_uniform()
    if stddev > 0:
        return nn.initializers.truncated_normal(stddev=stddev)
    return nn.linear.default_kernel_init


INPUT_SCALES = {"unit": 1.0 / 255.0, "raw": 1.0}  # what uint8 pixels are multiplied by


def _prepare_input(x: jax.Array, dtype, input_scale: str) -> jax.Array:
    """uint8 images become floats (scaled by ``INPUT_SCALES``); float inputs are used as they are."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        return x.astype(dtype) * jnp.asarray(INPUT_SCALES[input_scale], dtype)
    return x.astype(dtype)


def _dense_stack(x, sizes: Sequence[int], num_actions: int, init, dtype, dueling: bool = False) -> jax.Array:
    """Hidden dense layers with ReLU, then a linear output layer, Q-values in float32.

    ``dueling`` (Wang et al. 2016): two such stacks, a state's value V and each action's
    advantage A, and Q = V + A - mean(A)."""
    if dueling:
        value = _dense_layers(x, sizes, 1, init, dtype, "value")
        advantage = _dense_layers(x, sizes, num_actions, init, dtype, "advantage")
        q = value + advantage - jnp.mean(advantage, axis=-1, keepdims=True)
    else:
        q = _dense_layers(x, sizes, num_actions, init, dtype)
    return q.astype(jnp.float32)


def _dense_layers(x, sizes: Sequence[int], outputs: int, init, dtype, stream: str | None = None) -> jax.Array:
    """ReLU layers of ``sizes`` then a linear layer of ``outputs``; named ``<stream>_<i>`` in a
    dueling head (Flax's Dense_<i> otherwise, the names every checkpoint has)."""
    names = [f"{stream}_{i}" if stream else None for i in range(len(sizes) + 1)]
    for size, name in zip(sizes, names, strict=False):
        x = nn.relu(nn.Dense(size, kernel_init=init, bias_init=nn.initializers.zeros, dtype=dtype, name=name)(x))
    return nn.Dense(outputs, kernel_init=init, bias_init=nn.initializers.zeros, dtype=dtype, name=names[-1])(x)


class _ConvQNetwork(nn.Module):
    """Convolutions, flatten, dense layers; the two CNNs differ only in their default padding."""

    num_actions: int
    conv_features: tuple[int, ...] = (16, 32, 64)
    conv_kernels: tuple[int, ...] = (3, 3, 3)
    conv_strides: tuple[int, ...] = (2, 2, 1)
    dense: tuple[int, ...] = (1024, 1024, 1024, 1024)
    init_stddev: float = 0.02
    kernel_init: str = "truncated_normal"
    dtype: str = "float32"
    input_scale: str = "unit"
    dueling: bool = False
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = _DTYPES[self.dtype]
        init = _kernel_init(self.kernel_init, self.init_stddev)
        x = _prepare_input(x, dtype, self.input_scale)
        for features, kernel, stride in zip(
            self.conv_features, self.conv_kernels, self.conv_strides, strict=True
        ):
            x = nn.Conv(
                features,
                kernel_size=(kernel, kernel),
                strides=(stride, stride),
                padding=self.padding,
                kernel_init=init,
                bias_init=nn.initializers.zeros,
                dtype=dtype,
            )(x)
            x = nn.relu(x)
        x = x.reshape((x.shape[0], -1))
        return _dense_stack(x, self.dense, self.num_actions, init, dtype, self.dueling)


class HvassQNetwork(_ConvQNetwork):
    """The tutorial's network: 3x3 convolutions with SAME padding, then wide dense layers."""

    padding: str = "SAME"


class NatureQNetwork(_ConvQNetwork):
    """A Nature-DQN style CNN: VALID padding; set 32/64/64, 8/4/3, 4/2/1, dense 512 for the
    paper's. Dopamine's JAX NatureDQNNetwork keeps Flax's SAME padding (``padding``)."""

    padding: str = "VALID"


class MLPQNetwork(nn.Module):
    """Dense layers with ReLU and a linear output, for vector observations."""

    num_actions: int
    dense: tuple[int, ...] = (64, 64)
    init_stddev: float = 0.0
    kernel_init: str = "truncated_normal"
    dtype: str = "float32"
    input_scale: str = "unit"
    dueling: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = _DTYPES[self.dtype]
        x = _prepare_input(x, dtype, self.input_scale).reshape((x.shape[0], -1))
        init = _kernel_init(self.kernel_init, self.init_stddev)
        return _dense_stack(x, self.dense, self.num_actions, init, dtype, self.dueling)


def _ints(values) -> tuple[int, ...]:
    """Config lists (possibly omegaconf ListConfig) as a hashable tuple of ints."""
    return tuple(int(v) for v in values)


def make_network(cfg, num_actions: int) -> nn.Module:
    """The network named by ``cfg.name`` ("hvass", "nature" or "mlp") from a ``NetworkConfig``."""
    common = dict(
        num_actions=int(num_actions),
        dense=_ints(cfg.dense),
        init_stddev=float(cfg.init_stddev),
        kernel_init=str(cfg.kernel_init),
        dtype=str(cfg.dtype),
        input_scale=str(cfg.input_scale),
        dueling=bool(cfg.dueling),
    )
    if cfg.dtype not in _DTYPES:
        raise ValueError(f"network dtype {cfg.dtype!r} is not one of {sorted(_DTYPES)}")
    if cfg.name == "mlp":
        return MLPQNetwork(**common)
    convs = dict(
        conv_features=_ints(cfg.conv_features),
        conv_kernels=_ints(cfg.conv_kernels),
        conv_strides=_ints(cfg.conv_strides),
    )
    if cfg.padding is not None:  # null: the network's own
        convs["padding"] = str(cfg.padding)
    if cfg.name == "hvass":
        return HvassQNetwork(**common, **convs)
    if cfg.name == "nature":
        return NatureQNetwork(**common, **convs)
    raise ValueError(f"unknown network {cfg.name!r}; choose hvass, nature or mlp")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from omegaconf import OmegaConf

from dqn_jax.config import NetworkConfig
from dqn_jax.core.networks import (
    _DTYPES,
    HvassQNetwork,
    MLPQNetwork,
    NatureQNetwork,
    make_network,
)
from tests.programs import compute_dtypes, count_params

SMALL = dict(conv_features=[4, 8], conv_kernels=[3, 3], conv_strides=[2, 1], dense=[16])


def test_default_hvass_parameter_count():
    network = make_network(NetworkConfig(), num_actions=4)
    assert isinstance(network, HvassQNetwork)
    # Shapes only: no need to allocate 38 million floats to count them.
    params = jax.eval_shape(network.init, jax.random.key(0), jnp.zeros((1, 105, 80, 2), jnp.uint8))
    total = count_params(params)
    first_dense = count_params(params["params"]["Dense_0"])
    assert total == pytest.approx(38.6e6, rel=0.005)
    assert first_dense == pytest.approx(35.4e6, rel=0.01)
    # SAME padding: 105x80 -> 53x40 -> 27x20 -> 27x20, 64 channels.
    assert params["params"]["Dense_0"]["kernel"].shape == (27 * 20 * 64, 1024)


def random_params(network, sample):
    """Parameters of the right shapes without compiling the initialisers (slow on CPU)."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(network.init, jax.random.key(0), sample)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0, 0.1, s.shape), s.dtype), shapes)


@pytest.mark.parametrize("name", ["hvass", "nature"])
def test_cnn_shapes_dtypes_and_uint8_scaling(name):
    cfg = NetworkConfig(name=name, **SMALL)
    network = make_network(cfg, num_actions=3)
    images = jax.random.randint(jax.random.key(1), (5, 21, 16, 2), 0, 256).astype(jnp.uint8)
    params = random_params(network, images)
    q = jax.jit(network.apply)(params, images)
    assert q.shape == (5, 3) and q.dtype == jnp.float32
    # uint8 input is scaled by 1/255 inside; the same values as floats are used as they are.
    q_float = jax.jit(network.apply)(params, images.astype(jnp.float32) / 255.0)
    np.testing.assert_allclose(q, q_float, rtol=1e-5, atol=1e-6)


def test_nature_uses_valid_padding():
    network = make_network(NetworkConfig(name="nature", **SMALL), num_actions=2)
    params = jax.eval_shape(network.init, jax.random.key(0), jnp.zeros((1, 21, 16, 2), jnp.uint8))
    assert isinstance(network, NatureQNetwork)
    # VALID: 21x16 -(3, stride 2)-> 10x7 -(3, stride 1)-> 8x5, 8 channels.
    assert params["params"]["Dense_0"]["kernel"].shape == (8 * 5 * 8, 16)


def test_initialiser_and_zero_biases():
    network = make_network(NetworkConfig(dense=[256], conv_features=[32], conv_kernels=[3],
                                         conv_strides=[1], init_stddev=0.02), num_actions=2)
    params = jax.jit(network.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 2), jnp.uint8))["params"]
    kernel = np.asarray(params["Dense_0"]["kernel"])
    assert np.abs(kernel).max() <= 2 * 0.02 + 1e-6  # truncated at two standard deviations
    assert 0.012 < kernel.std() < 0.02  # truncation shrinks the stddev a little
    assert all(float(jnp.abs(p["bias"]).max()) == 0.0 for p in params.values())


def test_mlp_and_listconfig():
    cfg = OmegaConf.structured(NetworkConfig(name="mlp", dense=[8, 8], init_stddev=0.0))
    network = make_network(cfg, num_actions=2)
    assert isinstance(network, MLPQNetwork) and network.dense == (8, 8)
    obs = jnp.ones((3, 4), jnp.float32)
    params = jax.eval_shape(network.init, jax.random.key(0), obs)
    assert count_params(params) == 4 * 8 + 8 + 8 * 8 + 8 + 8 * 2 + 2
    assert jax.eval_shape(network.apply, params, obs).shape == (3, 2)


def lowered_update(dtype: str):
    """The lowered loss gradient (forward and backward) of a small CNN and its parameters."""
    from dqn_jax.algorithms.hvass.optimise import q_loss

    network = make_network(NetworkConfig(dtype=dtype, **SMALL), num_actions=3)
    images = jnp.full((2, 12, 10, 2), 128, jnp.uint8)
    params = jax.eval_shape(network.init, jax.random.key(0), images)
    grad = jax.jit(jax.grad(q_loss), static_argnums=1)
    return grad.lower(params, network.apply, images, jnp.zeros((2, 3))), params


def test_bfloat16_convolutions_and_dots_in_the_program_params_float32():
    """bfloat16: every convolution and dot of the forward and backward pass takes bf16
    operands (read from the lowered program, not from output dtypes); float32: none does."""
    lowered, params = lowered_update("bfloat16")
    types = compute_dtypes(lowered.as_text())
    # 2 convolutions + 2 dense layers forward; backward, the gradients w.r.t. the weights
    # of all four and w.r.t. the inputs of the last three.
    assert len(types) == 4 + 7 and set(types) == {"bf16"}
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(params))
    f32_types = compute_dtypes(lowered_update("float32")[0].as_text())
    assert f32_types == ["f32"] * 11


def test_compute_dtypes_reads_compiled_gpu_and_cpu_programs():
    """The compiled forms the GPU check reads: cuBLAS and cuDNN calls, fused and plain dots."""
    hlo = "\n".join([
        '%cublas-gemm.1 = (bf16[128,1024]{1,0}, s8[4194304]{0}) custom-call(bf16[128,34560]{1,0} %a, '
        'bf16[34560,1024]{1,0} %b), custom_call_target="__cublas$gemm", backend_config={}',
        '%cudnn-conv = (bf16[128,53,40,16]{3,2,1,0}, u8[0]{0}) custom-call(bf16[128,105,80,2]{3,2,1,0} %x, '
        'bf16[3,3,2,16]{3,2,1,0} %k), window={size=3x3}, custom_call_target="__cudnn$convForward"',
        "ROOT %dot.1 = f32[2,3]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}",
        "%conv.2 = f32[2,6,5,4]{3,2,1,0} convolution(%f, %k), window={size=3x3 stride=2x2}",
        "%add.3 = bf16[2,3]{1,0} add(%dot.1, %c)",
    ])
    assert compute_dtypes(hlo) == ["bf16", "bf16", "f32", "f32"]


def test_bfloat16_output_rounds_like_bfloat16_and_stays_float32():
    network = {d: make_network(NetworkConfig(dtype=d, **SMALL), num_actions=3) for d in _DTYPES}
    images = jax.random.randint(jax.random.key(1), (4, 21, 16, 2), 0, 256).astype(jnp.uint8)
    params = random_params(network["float32"], images)
    q = {d: jax.jit(n.apply)(params, images) for d, n in network.items()}
    assert q["bfloat16"].dtype == jnp.float32
    # bf16 keeps 8 bits of mantissa: close to float32, but not equal to it.
    diff = np.abs(np.asarray(q["bfloat16"]) - np.asarray(q["float32"]))
    scale = np.abs(np.asarray(q["float32"])).max()
    assert 0 < diff.max() < 0.05 * scale


def _conv_output(size: int, kernel: int, stride: int, padding: str) -> int:
    return -(-size // stride) if padding == "SAME" else (size - kernel) // stride + 1


@pytest.mark.parametrize("name", ["hvass", "nature"])
@pytest.mark.parametrize("padding", [None, "SAME", "VALID"])
def test_padding_setting_shapes_the_convolutions_output(name, padding):
    """null keeps the network's own (hvass SAME, nature VALID); SAME on nature is Dopamine's
    NatureDQNNetwork (84x84: 21, 11, 11 -> 7,744 features where VALID gives 3,136)."""
    cfg = NetworkConfig(name=name, conv_features=[32, 64, 64], conv_kernels=[8, 4, 3], conv_strides=[4, 2, 1],
                        dense=[512], padding=padding)
    params = jax.eval_shape(make_network(cfg, 4).init, jax.random.key(0), jnp.zeros((1, 84, 84, 4), jnp.uint8))
    used = padding or ("SAME" if name == "hvass" else "VALID")
    side = 84
    for kernel, stride in ((8, 4), (4, 2), (3, 1)):
        side = _conv_output(side, kernel, stride, used)
    assert params["params"]["Dense_0"]["kernel"].shape == (side * side * 64, 512)
    assert side == (11 if used == "SAME" else 7)


def test_xavier_uniform_weights_match_glorots_bounds_in_every_layer():
    """Each kernel uniform on +-sqrt(6 / (fan_in + fan_out)), a convolution's fans counting
    its receptive field (Glorot & Bengio 2010, as Flax and Keras compute them)."""
    cfg = NetworkConfig(name="nature", conv_features=[32, 64], conv_kernels=[8, 4], conv_strides=[4, 2],
                        dense=[256], kernel_init="xavier_uniform", padding="SAME")
    params = jax.jit(make_network(cfg, 4).init)(jax.random.key(3), jnp.zeros((1, 84, 84, 4), jnp.uint8))["params"]
    for layer in params.values():
        kernel = np.asarray(layer["kernel"])
        field = int(np.prod(kernel.shape[:-2]))
        limit = np.sqrt(6.0 / (field * kernel.shape[-2] + field * kernel.shape[-1]))
        assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.95 * limit
        assert kernel.std() == pytest.approx(limit / np.sqrt(3.0), rel=0.05)  # a uniform's stddev
        assert float(np.abs(layer["bias"]).max()) == 0.0
    truncated = make_network(NetworkConfig(**{**cfg.__dict__, "kernel_init": "truncated_normal"}), 4)
    other = jax.jit(truncated.init)(jax.random.key(3), jnp.zeros((1, 84, 84, 4), jnp.uint8))["params"]
    assert np.abs(np.asarray(other["Conv_0"]["kernel"])).max() <= 2 * 0.02 + 1e-6


def test_unknown_network_name():
    with pytest.raises(ValueError, match="unknown network"):
        make_network(NetworkConfig(name="resnet"), num_actions=2)


def test_input_scale_raw_feeds_pixels_as_the_tutorial_did():
    """"unit" divides uint8 pixels by 255; "raw" keeps 0-255 (float input is used as given)."""
    import numpy as np

    from dqn_jax.config import NetworkConfig
    from dqn_jax.core.networks import make_network

    small = dict(conv_features=[4], conv_kernels=[3], conv_strides=[4], dense=[8])
    unit = make_network(NetworkConfig(**small), 3)
    raw = make_network(NetworkConfig(**small, input_scale="raw"), 3)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 105, 80, 2), dtype=np.uint8)
    params = unit.init(jax.random.PRNGKey(0), pixels)
    as_float = pixels.astype(np.float32)
    np.testing.assert_allclose(raw.apply(params, pixels), unit.apply(params, as_float), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(unit.apply(params, pixels), raw.apply(params, as_float / 255), rtol=1e-4, atol=1e-8)
    assert not np.allclose(raw.apply(params, pixels), unit.apply(params, pixels))


@pytest.mark.parametrize("name", ["mlp", "nature"])
def test_a_dueling_head_is_value_plus_advantage_minus_their_mean(name):
    """Q from the two streams' own layers, recomputed here by hand from the parameters."""
    small = dict(SMALL, conv_strides=[2, 2]) if name == "nature" else {"dense": [8]}
    cfg = NetworkConfig(name=name, dueling=True, init_stddev=0.1, **small)
    network = make_network(cfg, num_actions=3)
    x = (jnp.arange(2 * 12 * 12 * 2) % 256).reshape(2, 12, 12, 2).astype(jnp.uint8) if name == "nature" \
        else jnp.linspace(-1, 1, 8).reshape(2, 4)
    params = network.init(jax.random.key(0), x)
    layers = params["params"]
    assert {"value_0", "value_1", "advantage_0", "advantage_1"} <= set(layers)
    assert layers["value_1"]["kernel"].shape[-1] == 1 and layers["advantage_1"]["kernel"].shape[-1] == 3

    def features(inputs):  # what both streams read: the network with its head cut off
        if name == "mlp":
            return np.asarray(inputs, np.float32).reshape(2, -1)
        cut = {k: v for k, v in layers.items() if k.startswith("Conv")}
        h = np.asarray(inputs, np.float32) / 255.0
        for i in range(len(cut)):
            h = jax.lax.conv_general_dilated(h, cut[f"Conv_{i}"]["kernel"], (2, 2), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = np.maximum(np.asarray(h + cut[f"Conv_{i}"]["bias"]), 0.0)
        return h.reshape(2, -1)

    def stream(h, prefix):
        h = np.maximum(h @ layers[f"{prefix}_0"]["kernel"] + layers[f"{prefix}_0"]["bias"], 0.0)
        return h @ layers[f"{prefix}_1"]["kernel"] + layers[f"{prefix}_1"]["bias"]

    h = features(x)
    value, advantage = stream(h, "value"), stream(h, "advantage")
    want = value + advantage - advantage.mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(network.apply(params, x), want, rtol=1e-4, atol=1e-5)

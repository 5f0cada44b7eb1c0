"""The drawing parts on states of a real Breakout game: video frames, sinks, network insides."""

from __future__ import annotations

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dqn_jax.analyze import pictures, probe
from dqn_jax.analyze import video as display
from dqn_jax.config import EnvConfig, NetworkConfig
from dqn_jax.core.motion import init_tracer, trace
from dqn_jax.core.networks import make_network
from dqn_jax.core.schedules import ControlSignals
from dqn_jax.envs import make_games
from dqn_jax.runner import logs
from tests.conftest import compose_config

pytestmark = pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # ffmpeg: fork, then exec


@pytest.fixture(scope="module")
def played():
    """60 states of a real Breakout game under random play: frame and motion trace."""
    with make_games(EnvConfig(), 1, seed=3) as games:
        frames, _ = games.reset()
        tracer, restart = init_tracer(frames), np.ones(1, bool)
        rng = np.random.default_rng(0)
        states = []
        for _ in range(60):
            tracer, state = trace(tracer, frames, restart)
            states.append(np.asarray(state[0]))
            step = games.step(rng.integers(0, games.num_actions, 1))
            frames, restart = step.frames, step.ended
        return np.stack(states), games.action_names


def tiny_network(name="hvass", strides=(4, 4)):
    cfg = NetworkConfig(name=name, conv_features=[4, 8], conv_kernels=[3, 3],
                        conv_strides=list(strides), dense=[16])
    return make_network(cfg, 4)


def test_picture_and_strip_put_the_frame_beside_its_trace(played):
    states, _ = played
    state = states[-1]
    assert state[..., 1].max() == 255  # the ball and paddle moved: the trace is not empty
    big = display.picture(state)
    reference = np.kron(np.concatenate([state[..., 0], state[..., 1]], axis=1),
                        np.ones((4, 4), np.uint8))
    assert big.shape == (420, 640, 3) and np.array_equal(big[..., 0], reference)
    strip = pictures.strip(state)
    assert np.array_equal(strip[:, :80], state[..., 0]) and np.array_equal(strip[:, 82:], state[..., 1])
    assert (strip[:, 80:82] == 255).all()


def _bar_lengths(panel: np.ndarray, actions: int) -> tuple[list[int], list[bool]]:
    """Per action row: the bar's length in pixels and whether it is green (chosen)."""
    header, row = 24, max(14, min(48, (panel.shape[0] - 28) // actions))
    lengths, green = [], []
    for i in range(actions):
        band = panel[header + i * row + row // 2 + 1]  # a pixel row through the bar
        coloured = (band[:, 2] > 150) | (band[:, 1] > 150)
        lengths.append(int(coloured.sum()))
        green.append(bool(coloured.any() and band[coloured][:, 1].mean() > band[coloured][:, 2].mean()))
    return lengths, green


def test_q_panel_orders_the_bars_by_q_value_and_marks_the_chosen_action(played):
    states, names = played
    network = tiny_network()
    params = network.init(jax.random.PRNGKey(1), states[:1])
    q = np.asarray(network.apply(params, states[-1:]))[0]
    chosen = int(np.argmin(q))
    panel = display.q_panel(420, q, chosen, names, step=7)
    assert panel.shape == (420, 240, 3)
    lengths, green = _bar_lengths(panel, len(names))
    assert np.argmax(lengths) == np.argmax(q) and np.argmin(lengths) == np.argmin(q)
    assert green == [i == chosen for i in range(len(names))]
    assert np.array_equal(display.q_panel(420, q, chosen, names, 7), panel)  # deterministic
    assert not np.array_equal(display.q_panel(420, q, chosen, names, 8), panel)  # the step shows


def test_video_sink_writes_the_first_n_episodes_one_file_each(played, tmp_path):
    states, names = played
    sink = display.VideoSink(tmp_path / "test-video.mp4", gif=True, q_values=True, action_names=names,
                             episodes=2, per_episode=True)
    q = np.linspace(-1, 1, len(names))
    for lengths in (7, 5, 3):  # the third episode is past the two asked for
        for state in states[:lengths]:
            sink(state, q, 1)
        sink.episode_end()
    sink.close()
    assert not sink.wants_frames
    assert sorted(p.name for p in sink.paths) == ["test-video-1.gif", "test-video-1.mp4",
                                                  "test-video-2.gif", "test-video-2.mp4"]
    for name, frames in (("test-video-1", 7), ("test-video-2", 5)):
        reader = imageio.get_reader(tmp_path / f"{name}.mp4")
        assert reader.count_frames() == frames
        assert reader.get_data(0).shape == (420, 640 + 240, 3)
        reader.close()
        with Image.open(tmp_path / f"{name}.gif") as gif:
            assert gif.n_frames == frames and gif.size == ((640 + 240) // 2, 210)


def test_open_sink_keeps_test_modes_plain_calls(played, tmp_path):
    states, _ = played
    cfg = compose_config(["mode=test", "video=true"], tmp_path)
    sink = display.open_sink(cfg, tmp_path)
    for state in states:
        sink(state)  # what runner.testing.test calls
    sink.close()
    reader = imageio.get_reader(tmp_path / "test-video.mp4")
    assert reader.count_frames() == len(states)
    assert np.abs(reader.get_data(len(states) - 1)[..., 0].astype(int)
                  - display.picture(states[-1])[..., 0]).mean() < 3  # what was fed, up to the codec
    reader.close()


def test_conv_outputs_match_a_plain_convolution(played):
    state = played[0][-1]
    for name, padding in (("hvass", "SAME"), ("nature", "VALID")):
        network = tiny_network(name, strides=(2, 2))
        params = network.init(jax.random.PRNGKey(2), state[None])
        layers = probe.conv_layers(network, params, state)
        x = jnp.asarray(state[None], jnp.float32) / 255.0
        assert [n for n, _ in layers] == ["conv 1", "conv 2"]
        for (_, out), i in zip(layers, range(2), strict=True):
            conv = params["params"][f"Conv_{i}"]
            x = jax.nn.relu(jax.lax.conv_general_dilated(
                x, conv["kernel"], (2, 2), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
                + conv["bias"])
            np.testing.assert_allclose(out, np.asarray(x[0]), atol=1e-5)
        assert [k.shape for _, k in probe.layer_kernels(params, "Conv")] == [(3, 3, 2, 4), (3, 3, 4, 8)]


def test_dense_weights_of_an_mlp(tmp_path):
    cfg = NetworkConfig(name="mlp", dense=[32, 16])
    network = make_network(cfg, 2)
    params = network.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))
    kernels = probe.layer_kernels(params, "Dense")
    assert [k.shape for _, k in kernels] == [(4, 32), (32, 16), (16, 2)]
    path = pictures.dense_weights(kernels, tmp_path / "dense.png", "mlp")
    image = Image.open(path)
    assert image.size == (1200, 460)
    assert np.asarray(image.convert("L"), float).var() > 200


def test_signals_from_the_config_match_the_optax_schedules():
    cfg = compose_config(["experiment=breakout_cpu_check"])
    signals = ControlSignals.from_config(cfg.schedule)
    states = np.array([0.0, 1000.0, 75_000.0, 150_000.0, 299_999.0, 500_000.0])
    for name in ("epsilon", "learning_rate", "loss_limit", "max_epochs", "replay_fraction"):
        expected = [signals.values(int(s))[name] for s in states]
        np.testing.assert_allclose(pictures._signal_from_config(cfg, name, states), expected, rtol=1e-5)


def test_pick_states_takes_the_largest_errors_and_distinct_random_ones():
    errors = np.random.default_rng(5).exponential(size=(50, 4)).astype(np.float32)
    snapshot = probe.Snapshot(*(np.zeros(1),) * 7, errors=errors, epsilon=0.1)
    largest, chosen = probe.pick_states(snapshot, 6, seed=1)
    assert np.array_equal(errors.reshape(-1)[largest], np.sort(errors.reshape(-1))[::-1][:6])
    assert len(set(chosen.tolist())) == 6 and chosen.max() < errors.size


def test_training_curves_from_the_logs_alone(tmp_path):
    """A run directory with only its CSV logs (no config, no MLflow) still gets its curves."""
    rewards = logs.CsvLog(tmp_path / "rewards.csv", logs.REWARD_FIELDS)
    window = logs.RewardWindow(30)
    for episode, score in enumerate([0, 2, 1, 4, 3, 5], start=1):
        rewards.write(episode, episode * 500, float(score), window.add(score))
    rewards.close()
    path = pictures.training_curves(tmp_path)
    assert path == tmp_path / "analysis" / "training-curves.png"
    assert Image.open(path).size == (1500, 1000)
    assert np.asarray(Image.open(path).convert("L"), float).var() > 200


def test_a_dqn_runs_curves_show_its_batches_q_values_and_no_tutorial_signals(tmp_path):
    """A DQN run has no sweep (no q_values.csv): its Q panel draws q/* from MLflow, and the
    signals only the tutorial's method uses are marked, not drawn from the config."""
    dqn_cfg = compose_config(["algorithm=dqn"], tmp_path)
    hvass_cfg = compose_config([], tmp_path)
    states = np.array([0.0, 100.0, 200.0])
    histories = {"q/mean": (states, np.array([0.1, 0.3, 0.5])), "q/min": (states, np.zeros(3)),
                 "q/max": (states, np.ones(3))}
    fig = pictures._figure(6, 3)
    q_ax, dqn_ax, hvass_ax = fig.subplots(1, 3)
    pictures._draw_q_values(q_ax, {}, histories)
    (line,) = q_ax.get_lines()
    np.testing.assert_array_equal(line.get_ydata(), [0.1, 0.3, 0.5])
    pictures._curve(dqn_ax, {}, "cycle/loss_limit", "loss limit", dqn_cfg, states)
    pictures._curve(hvass_ax, {}, "cycle/loss_limit", "loss limit", hvass_cfg, states)
    assert not dqn_ax.get_lines() and "the tutorial's method only" in dqn_ax.texts[0].get_text()
    (limit,) = hvass_ax.get_lines()
    assert limit.get_ydata()[0] == pytest.approx(hvass_cfg.schedule.loss_limit.start)

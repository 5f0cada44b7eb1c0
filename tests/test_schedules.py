import jax
import jax.numpy as jnp
import pytest

from dqn_jax.config import ScheduleConfig, SignalConfig
from dqn_jax.core.schedules import ControlSignals, linear_signal


def test_linear_signal_hand_values():
    signal = linear_signal(1.0, 0.1, 1_000_000)
    assert float(signal(0)) == pytest.approx(1.0)
    assert float(signal(500_000)) == pytest.approx(0.55)
    assert float(signal(1_000_000)) == pytest.approx(0.1)
    assert float(signal(3_000_000)) == pytest.approx(0.1)  # past the span: stays at end
    rising = linear_signal(5, 10, 5e6)
    assert float(rising(2_500_000)) == pytest.approx(7.5)
    assert float(rising(10**9)) == pytest.approx(10.0)


def test_linear_signal_accepts_traced_counts():
    signal = linear_signal(1e-3, 1e-5, 5e6)
    assert float(signal(jnp.int32(2_500_000))) == pytest.approx(5.05e-4, rel=1e-5)
    assert float(jax.jit(signal)(jnp.int32(5_000_000))) == pytest.approx(1e-5, rel=1e-4)


def test_zero_span_is_the_end_value():
    assert float(linear_signal(1.0, 0.2, 0)(0)) == pytest.approx(0.2)


def test_control_signals_from_config():
    signals = ControlSignals.from_config(ScheduleConfig())
    assert signals.epsilon_test == pytest.approx(0.01)
    start = signals.values(0)
    assert set(start) == {"epsilon", "learning_rate", "loss_limit", "max_epochs", "replay_fraction"}
    assert all(isinstance(v, float) for v in start.values())
    assert start == pytest.approx({"epsilon": 1.0, "learning_rate": 1e-3, "loss_limit": 0.1,
                                   "max_epochs": 5.0, "replay_fraction": 0.1})
    assert signals.values(1_000_000)["epsilon"] == pytest.approx(0.1)
    assert signals.values(2_500_000) == pytest.approx(
        {"epsilon": 0.1, "learning_rate": 5.05e-4, "loss_limit": 0.0575, "max_epochs": 7.5,
         "replay_fraction": 0.55}, rel=1e-5)
    assert signals.values(50_000_000) == pytest.approx(
        {"epsilon": 0.1, "learning_rate": 1e-5, "loss_limit": 0.015, "max_epochs": 10.0,
         "replay_fraction": 1.0}, rel=1e-5)


def test_custom_signal_config():
    cfg = ScheduleConfig(epsilon=SignalConfig(0.5, 0.0, 100))
    assert ControlSignals.from_config(cfg).values(25)["epsilon"] == pytest.approx(0.375)


def test_a_signal_holds_its_start_for_begin_states_then_moves():
    """Dopamine's linearly_decaying_epsilon, written here as its paper states it: 1.0 through
    the warm-up, then to the floor over the decay period, then the floor."""
    def reference(step, warmup=20_000, period=250_000, floor=0.01):
        return floor + (1.0 - floor) * min(max((period + warmup - step) / period, 0.0), 1.0)

    cfg = ScheduleConfig(epsilon=SignalConfig(1.0, 0.01, 250_000, begin=20_000))
    signals = ControlSignals.from_config(cfg)
    for step in (0, 19_999, 20_000, 20_001, 145_000, 250_000, 269_999, 270_000, 1_000_000):
        assert signals.values(step)["epsilon"] == pytest.approx(reference(step), abs=1e-6), step
    assert float(jax.jit(signals.epsilon)(jnp.int32(145_000))) == pytest.approx(reference(145_000), rel=1e-5)
    # begin 0 (the default) is the plain linear signal
    assert ControlSignals.from_config(ScheduleConfig()).values(500_000)["epsilon"] == pytest.approx(0.55)

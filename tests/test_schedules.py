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

"""Divergence that stays finite: Q-values past what the clipped rewards allow, or a loss
grown far past its running level, stop the run as a NaN does."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dqn_jax.config import ConfigError, validate
from dqn_jax.runner.faults import FAILURE_TAG, Diverged, Limits, check_cycle
from tests.conftest import TINY, compose_config, run_app

SIGNALS = {"learning_rate": 1e4, "loss_limit": 0.1}


def test_the_q_bound_is_the_factor_times_the_largest_discounted_sum_of_clipped_rewards():
    assert Limits.from_config(compose_config([])).q_bound == pytest.approx(10 * 1.0 / (1 - 0.97))  # 333.3
    cfg = compose_config(["memory.reward_clip=2", "algorithm.discount=0.9", "faults.q_factor=5"])
    assert Limits.from_config(cfg).q_bound == pytest.approx(5 * 2 / 0.1)
    assert Limits.from_config(compose_config(["faults.q_factor=null"])).q_bound is None
    assert Limits.from_config(compose_config(["faults.q_bound=50", "faults.q_factor=null"])).q_bound == 50
    assert Limits.from_config(compose_config(["algorithm.discount=1"])).q_bound is None  # no finite sum


def test_a_q_value_past_the_bound_either_side_stops_the_cycle_and_names_it():
    limits = Limits(q_bound=100.0)
    check_cycle(cycle=2, states=300, values={"swept Q-value max": 100.0, "swept Q-value min": -100.0},
                signals=SIGNALS, limits=limits)  # at the bound: fine
    for name, value in (("swept Q-value max", 100.5), ("batch Q-value min", -250.0)):
        with pytest.raises(Diverged) as err:
            check_cycle(cycle=2, states=300, values={name: value, "batch loss": 0.1}, signals=SIGNALS, limits=limits)
        message = str(err.value)
        assert "\n" not in message
        for part in ("learning cycle 2 at 300 states", f"{name} is {value:.4g}, past 100", "faults.q_factor",
                     "learning rate 1e+04", "no checkpoint was written after the last good one"):
            assert part in message, part
    check_cycle(cycle=2, states=300, values={"swept Q-value max": 1e9}, signals=SIGNALS,
                limits=Limits(q_bound=None))  # no bound: no check


def test_a_loss_far_past_its_running_level_stops_the_cycle_once_the_level_is_known():
    limits = Limits(loss_growth=100.0, floor=1.0, window=3, after=3)
    for loss in (50.0, 2.0, 3.0):  # the first cycles only set the level (median 3, not 50)
        check_cycle(cycle=1, states=10, values={"batch loss": loss}, signals=SIGNALS, limits=limits)
    check_cycle(cycle=4, states=40, values={"batch loss": 299.0}, signals=SIGNALS, limits=limits)
    assert limits.losses == [2.0, 3.0, 299.0]  # the window of the last three
    with pytest.raises(Diverged, match=r"batch loss is 1e\+04, 3.33e\+03 times its running level 3 "):
        check_cycle(cycle=5, states=50, values={"batch loss": 1e4}, signals=SIGNALS, limits=limits)
    assert limits.losses == [2.0, 3.0, 299.0]  # a diverged loss does not raise the level
    small = Limits(loss_growth=100.0, floor=1.0, window=3, after=0, losses=[1e-6, 1e-6])
    check_cycle(cycle=3, states=30, values={"batch loss": 50.0}, signals=SIGNALS, limits=small)  # floor 1


@pytest.mark.parametrize("bad", ["faults.loss_growth=1", "faults.q_factor=0", "faults.q_bound=-1",
                                 "faults.loss_window=0", "stop_grace_seconds=0"])
def test_bad_fault_settings_are_rejected_with_the_key_named(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0].replace(".", r"\.")):
        validate(compose_config([bad]))


def test_a_run_diverging_without_nan_stops_failed_before_its_checkpoint(tmp_path):
    """The issue's run: a learning rate of 1e4 once meant a loss of 2.78e+33 and status 0.
    Tiny settings: the first cycle's Q-values are fine, the second's are past 333.3."""
    args = [*TINY, "steps=3000", "name=div", "schedule.learning_rate.start=1e4", "schedule.learning_rate.end=1e4"]
    result = run_app(args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    run_dir = tmp_path / "runs" / "breakout" / "div"
    with open(run_dir / "q_values.csv", newline="") as f:
        swept = [(int(r["states"]), float(r["q_max"])) for r in csv.DictReader(f)]
    first_bad = next(states for states, q_max in swept if abs(q_max) > 1000 / 3)
    assert line.startswith(f"dqn_jax: error: training diverged in learning cycle {len(swept)} at {first_bad} "
                           "states: swept Q-value max is ")
    assert "past 333.3" in line and "try a smaller schedule.learning_rate" in line
    saved = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] < first_bad  # the newest checkpoint is older than the bad cycle
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns.db")
    run = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FAILED" and run.data.tags[FAILURE_TAG] == line.removeprefix("dqn_jax: error: ")


def test_check_cycle_without_limits_is_the_finite_check_alone(tmp_path: Path):
    check_cycle(cycle=1, states=1, values={"swept Q-value max": 1e30, "batch loss": 1e30}, signals=SIGNALS)

"""Learning beside acting (algorithm.learner_devices): the split step against the whole
one, the games' network one step old, the devices it needs, and a run that resumes."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from dqn_jax.algorithms import dqn
from dqn_jax.algorithms.learners import ActingCopies, host_device_flags, learner_mesh
from dqn_jax.config import ConfigError, validate
from tests.conftest import ROOT, app_env, compose_config


def test_a_step_split_over_learners_is_the_whole_batchs_step():
    """One gradient step, then two more (one copies into the target network), on the same
    batches: whole on one device, and split over 1 and 2 learner devices (3 CPU devices in
    a process of its own), for DQN and for Double DQN with 3-step returns."""
    done = subprocess.run([sys.executable, "-m", "tests.learners_check"], cwd=ROOT, env=app_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out.pop("devices") == 3
    assert len(out) == 4
    for case, diff in out.items():
        assert diff["updates"] == 3, case
        assert diff["moved"] > 1e-5, case  # the steps moved the network: the comparison means something
        # the mean of two half-batch means is the batch's mean gradient: equal up to rounding
        assert diff["params"] <= 1e-6 * diff["param_scale"] + 1e-9, case
        assert diff["target"] <= 1e-6 * diff["param_scale"] + 1e-9, case
        assert diff["loss"] <= 1e-6 and diff["q_min"] <= 1e-6 and diff["key"] == 0, case


class _Train:
    def __init__(self, value):
        self.params = {"w": np.full(3, value, np.float32)}


def test_the_games_play_with_the_network_one_gradient_step_old():
    copies = ActingCopies()
    fresh, first, second = _Train(0.0), _Train(1.0), _Train(2.0)
    assert float(copies.params(fresh)["w"][0]) == 0.0  # a fresh state: itself
    copies.stepped(first)
    assert float(copies.params(first)["w"][0]) == 0.0  # one step behind the first step
    copies.stepped(second)
    assert float(copies.params(second)["w"][0]) == 1.0  # one step behind the second
    played = copies.params(second)["w"]
    assert isinstance(played, jax.Array) and played.devices() == {jax.devices("cpu")[0]}
    restored = _Train(7.0)  # a state no step of ours made (a restored checkpoint): itself
    assert float(copies.params(restored)["w"][0]) == 7.0


def test_the_flags_ask_for_a_device_per_learner_and_one_for_the_games():
    assert host_device_flags(0, "--a=1") == "--a=1"
    assert host_device_flags(2, "--a=1") == ("--xla_force_host_platform_device_count=3 "
                                             "--xla_cpu_multi_thread_eigen=false --a=1")
    kept = "--xla_force_host_platform_device_count=5"
    assert host_device_flags(2, kept) == kept  # a count the user set is left alone


def test_too_few_devices_is_one_line_naming_the_setting():
    with pytest.raises(ConfigError, match=r"algorithm.learner_devices=4 needs 5 CPU devices and JAX started with 1"):
        learner_mesh(4)  # this test process has one CPU device


def test_a_batch_the_learners_cannot_share_evenly_is_refused(tmp_path):
    cfg = compose_config(["algorithm=dqn", "algorithm.learner_devices=3", "memory.batch_size=32"], tmp_path)
    with pytest.raises(ConfigError, match=r"memory.batch_size=32 must be a multiple of algorithm.learner_devices=3"):
        validate(cfg)


def test_a_run_with_learners_trains_checkpoints_and_resumes(tmp_path):
    """`python -m dqn_jax` asks for the devices itself; the run takes the same gradient
    steps as one without learners, and resumes from its checkpoint onto the learners."""
    from tests.conftest import run_and_resume

    args = ["algorithm=dqn", "algorithm.warmup=100", "algorithm.report_every=200", "algorithm.learner_devices=2",
            "algorithm.target_copy_states=28", "memory.batch_size=8", "logger=none",
            "test_episodes_after_training=1"]  # the test plays on the games' device
    steps, state, counters = run_and_resume(args, tmp_path)
    assert steps[-2:] == [400, 600] and counters["states"] == 600
    assert (int(state.recorded), int(state.credit)) == (200, 0)
    assert int(state.train.updates) == 75 + 25  # as test_dqn's run without learners
    leaves = jax.tree.leaves
    assert all(np.isfinite(a).all() for a in leaves(state.train.params))
    assert any(not np.array_equal(a, b) for a, b in zip(leaves(state.train.params), leaves(state.train.target_params),
                                                        strict=True))
    assert isinstance(state.train, dqn.TargetTrainState)

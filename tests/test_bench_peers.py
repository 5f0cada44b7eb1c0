"""experiments/bench_peers.py's own logic, without the peers: the progress lines each
framework prints, the timed window, the ratio table and the matched command lines."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "experiments" / "bench_peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bp = _load()


def test_progress_lines_of_each_framework():
    lines = [
        (1.0, "training on cpu: 2 cores (jax 0.10.2; JAX sees no GPU)\n"),
        # dqn_jax: an episode line written over a progress bar's \r-separated records
        (2.0, "cycle 1: playing:   1%|  | 254/50000 [00:01<02:40]\r     1:255        epsilon 0.543  "
              "reward     3.0  mean of last 30    3.00\n"),
        (3.0, "    12:3310      epsilon 0.100  reward     1.0  mean of last 30    2.10\n"),
    ]
    assert bp.progress_points(lines, bp.FRAMEWORKS["dqn_jax"].pattern) == [(2.0, 255), (3.0, 3310)]
    cleanrl = [(1.0, "global_step=393, episodic_return=[1.]\n"), (1.5, "SPS: 132\n"),
               (2.5, "global_step=1429, episodic_return=[9.]\n")]
    assert bp.progress_points(cleanrl, bp.FRAMEWORKS["cleanrl"].pattern) == [(1.0, 393), (2.5, 1429)]
    sbx = [(4.0, "obs (84, 84, 4) uint8; sbx 0.28.0\n"), (5.0, "progress states=250\n"),
           (6.0, "done states=500\n")]
    assert bp.progress_points(sbx, bp.FRAMEWORKS["sbx"].pattern) == [(5.0, 250)]


def test_records_end_at_newlines_and_carriage_returns():
    read, write = os.pipe()
    os.write(write, b"Steps executed: 250 Episode length: 250 Return: 1.0\rSteps executed: 4")
    os.write(write, b"80 Episode length: 230 Return: 0.0\r\n\nlast")
    os.close(write)
    got = [line for _, line in bp.records(read)]
    os.close(read)
    assert got == ["Steps executed: 250 Episode length: 250 Return: 1.0",
                   "Steps executed: 480 Episode length: 230 Return: 0.0", "last"]
    assert bp.progress_points([(0.0, g) for g in got], bp.FRAMEWORKS["dopamine"].pattern) == [(0.0, 250), (0.0, 480)]


def test_cpu_seconds_of_a_process():
    assert bp.cpu_seconds(os.getpid()) > 0
    assert bp.cpu_seconds(2**22 + 12345) is None  # no such process


def test_states_per_second_times_the_window_past_the_start():
    points = [(0.0, 100), (5.0, 2000), (10.0, 2600), (20.0, 3600), (30.0, 4600)]
    speed, states, seconds = bp.states_per_second(points, start=2500)
    assert (states, seconds) == (2000, 20.0)
    assert speed == pytest.approx(100.0)
    with pytest.raises(ValueError, match="fewer than two"):
        bp.states_per_second(points, start=4000)


def test_table_ratios_to_dqn_jax():
    rows = [
        {"name": "dqn_jax", "version": "commit abc jax 0.10.2", "settings": "s", "differs": "d",
         "states_s": 80.0, "timed_states": 4000, "timed_s": 50.0, "cpu_s": 80.0},
        {"name": "cleanrl", "version": "cleanrl 1.2.0", "settings": "s", "differs": "d",
         "states_s": 60.0, "timed_states": 3000, "timed_s": 50.0, "stopped": True},
        {"name": "dopamine", "version": "?", "settings": "s", "differs": "d", "error": "not installed: x"},
    ]
    text = bp.table(rows)
    assert "80.0 (4,000 st. in 50 s)" in text and "1.00" in text
    assert "50.0 (160% of a core)" in text  # 4,000 states on 80 CPU-seconds in 50 s
    assert "60.0 (3,000 st. in 50 s, then stopped)" in text and "0.75" in text
    assert "did not run" in text and "not installed: x" in text
    md = bp.table(rows, markdown=True).splitlines()
    assert md[0].startswith("| peer | version |") and len(md) == 2 + len(rows)
    assert md[3].endswith("| 0.75 |")
    # no dqn_jax figure: no ratios
    assert "n/a (dqn_jax did not run)" in bp.table(rows[1:])


def test_commands_carry_the_same_work():
    work = bp.Work(states=6000, warmup=2000, memory=10_000, skip=500, window_s=60)
    jx = bp.command("dqn_jax", work, Path("/tmp/x"))
    assert "algorithm.learner_devices=2" in jx
    assert "algorithm.learner_devices=0" in bp.command("dqn_jax_in_turn", work, Path("/tmp/x"))
    # the table names the learner devices the row ran with
    assert "algorithm.learner_devices=3" in " ".join(bp.command("dqn_jax", work, Path("/tmp/x"), learners=3))
    assert "algorithm.learner_devices=3" in bp.settings_of("dqn_jax", 3)
    assert "algorithm.learner_devices=2" in bp.settings_of("dqn_jax")
    assert {"algorithm=dqn", "network=nature", "env.encoding=frame_stack", "env.height=84", "env.width=84",
            "env.num_envs=1", "memory.size=10000", "memory.batch_size=32", "algorithm.warmup=2000",
            "algorithm.train_every=4", "algorithm.target_copy_states=1000",
            "schedule.epsilon.span=2000", "schedule.epsilon.end=0.1", "steps=6000"} <= set(jx)
    cr = bp.command("cleanrl", work, Path("/tmp/x"))
    assert {"--total-timesteps=6000", "--learning-starts=2000", "--buffer-size=10000", "--batch-size=32",
            "--train-frequency=4", "--target-network-frequency=1000", "--end-e=0.1",
            "--exploration-fraction=0.3333333333333333"} <= set(cr)
    sb = bp.command("sbx", work, Path("/tmp/x"))
    assert {"--states=6000", "--warmup=2000", "--memory=10000", "--target-every=1000", "--eps-span=2000"} <= set(sb)
    assert str(bp.FRAMEWORKS["sbx"].python()).endswith(".venv-peers/sbx/bin/python")

"""The reward / Q-value logs, the running mean and the test statistics."""

from __future__ import annotations

import numpy as np

from dqn_jax.runner import logs


def test_csv_logs_append_across_reopen_and_restore_rewards(tmp_path):
    path = tmp_path / "rewards.csv"
    log = logs.CsvLog(path, logs.REWARD_FIELDS)
    log.write(1, 100, 3.0, 3.0)
    log.close()
    log = logs.CsvLog(path, logs.REWARD_FIELDS)  # a resumed run appends, no second header
    log.write(2, 250, 5.0, 4.0)
    log.close()
    lines = path.read_text().splitlines()
    assert lines[0] == "episode,states,reward,mean30" and len(lines) == 3
    assert logs.read_rewards(path) == [3.0, 5.0]
    assert logs.read_rewards(tmp_path / "absent.csv") == []


def test_reward_window_is_the_mean_of_the_last_30():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 50, 75).astype(float)
    window = logs.RewardWindow(30)
    assert window.mean == 0.0
    for i, s in enumerate(scores):
        mean = window.add(s)
        assert np.isclose(mean, scores[max(0, i - 29): i + 1].mean())
    resumed = logs.RewardWindow(30, history=scores[-30:])
    assert np.isclose(resumed.mean, scores[-30:].mean())


def test_summary_is_min_mean_max_std():
    scores = [40.0, 145.0, 386.0, 12.0]
    s = logs.summary(scores)
    assert s == {"episodes": 4.0, "min_score": 12.0, "mean_score": float(np.mean(scores)),
                 "max_score": 386.0, "std_score": float(np.std(scores))}


def test_cut_after_keeps_rows_up_to_the_checkpoint_and_drops_a_torn_row(tmp_path):
    path = tmp_path / "rewards.csv"
    log = logs.CsvLog(path, logs.REWARD_FIELDS)
    for episode, states in enumerate([100, 200, 300, 400], start=1):
        log.write(episode, states, float(episode), float(episode))
    log.close()
    with open(path, "a") as f:
        f.write("5,45")  # a row cut short by kill -9
    assert logs.cut_after(path, 300) == 2  # the row at 400 and the torn one
    lines = path.read_text().splitlines()
    assert lines == ["episode,states,reward,mean30", "1,100,1,1", "2,200,2,2", "3,300,3,3"]
    assert logs.cut_after(path, 300) == 0 and path.read_text().splitlines() == lines
    assert not list(tmp_path.glob(".*.tmp"))
    log = logs.CsvLog(path, logs.REWARD_FIELDS)  # the resumed run appends after the cut
    log.write(4, 350, 9.0, 9.0)
    log.close()
    assert logs.read_rewards(path) == [1.0, 2.0, 3.0, 9.0]

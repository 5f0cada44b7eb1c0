"""experiments/breakout_reference.py: a run's iterations binned as Dopamine bins them."""

from __future__ import annotations

import csv
import sys

import numpy as np
from PIL import Image

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "experiments"))
import breakout_reference as ref  # noqa: E402


def write_rewards(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["episode", "states", "reward", "mean30"])
        writer.writerows(rows)


def test_episodes_are_binned_by_the_iteration_they_end_in(tmp_path):
    rng = np.random.default_rng(0)
    ends = np.sort(rng.integers(1, 1_000_000, 300))
    scores = rng.integers(0, 40, 300).astype(float)
    write_rewards(tmp_path / "rewards.csv", [(i + 1, s, r, 0.0) for i, (s, r) in enumerate(zip(ends, scores, strict=True))])
    got = ref.iteration_means(tmp_path / "rewards.csv")
    for k, mean, n in got:  # the reference: a plain filter per iteration
        picked = (ends >= k * 250_000) & (ends < (k + 1) * 250_000)
        assert n == picked.sum() and mean == np.mean(scores[picked])
    assert [k for k, _, _ in got] == sorted({int(e) // 250_000 for e in ends})


def test_the_table_and_figure_show_the_references_and_the_run(tmp_path):
    write_rewards(tmp_path / "rewards.csv", [(1, 100_000, 2.0, 2.0), (2, 260_000, 6.0, 4.0), (3, 270_000, 8.0, 5.3)])
    assert ref.main([f"{tmp_path}=seed 0", "--out", str(tmp_path / "fig.png")]) == 0
    runs = {"seed 0": ref.iteration_means(tmp_path / "rewards.csv")}
    text = ref.table(runs)
    assert "| seed 0 | 2.0 (1 ep.) | 7.0 (2 ep.) |" in text
    assert "23.4 (22.6–25.0)" in text and "23.7 (22.8–24.2)" in text  # iteration 4 of both references
    width, height = Image.open(tmp_path / "fig.png").size
    assert width > 600 and height > 350
    assert ref.main([str(tmp_path / "missing")]) == 2

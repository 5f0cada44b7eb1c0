"""Breakout runs beside Dopamine's published curves, iteration by iteration (issue 23).

    python experiments/breakout_reference.py RUN_DIR[=LABEL] ... [--out docs/images/breakout-reference.png]

Dopamine reports, per iteration of 250,000 agent steps (1,000,000 frames), the mean return
of the training episodes that ended in it (epsilon-greedy, sticky actions); dqn_jax's
``rewards.csv`` holds every training episode with the states played when it ended, so the
same figure is the mean score of the episodes ending in [250,000 k, 250,000 (k + 1)). The
reference's per-iteration means and seed ranges are the public figures of the
google/dopamine repository, ``baselines/atari/data/breakout.json`` ("DQN (Adam + MSE in
JAX)") and ``breakout_CNN.json`` ("DQN"), 5 seeds each, as copied into
``../shared/reference/dopamine-breakout-early.md``. Prints a markdown table; draws the
figure (the reference's seed range as a band, each run's iterations as points on a line).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ITERATION = 250_000  # agent steps (= dqn_jax states) per Dopamine iteration
# (mean, min, max) of iterations 0..6, 5 seeds each
REFERENCES = {
    "Dopamine DQN (Adam + MSE in JAX), breakout.json": [
        (1.8, 1.7, 1.9), (6.5, 6.4, 6.6), (15.2, 14.8, 15.6), (18.9, 18.4, 20.0), (23.7, 22.8, 24.2),
        (27.8, 27.1, 28.3), (32.4, 30.4, 34.2)],
    "Dopamine JAX DQN, breakout_CNN.json": [
        (1.8, 1.6, 1.9), (7.1, 5.6, 8.1), (14.2, 13.3, 14.5), (18.5, 17.7, 19.2), (23.4, 22.6, 25.0),
        (29.7, 26.4, 34.4), (35.2, 34.2, 36.8)],
}


def iteration_means(rewards_csv: Path, iteration: int = ITERATION) -> list[tuple[int, float, int]]:
    """(iteration k, mean score of the episodes that ended in it, episodes) for every iteration
    with an episode, from a run's rewards.csv (columns episode, states, reward, mean30)."""
    scores: dict[int, list[float]] = {}
    with open(rewards_csv, newline="") as f:
        for row in csv.DictReader(f):
            scores.setdefault(int(row["states"]) // iteration, []).append(float(row["reward"]))
    return [(k, float(np.mean(v)), len(v)) for k, v in sorted(scores.items())]


def table(runs: dict[str, list[tuple[int, float, int]]]) -> str:
    """A markdown table: a row per reference and per run, a column per iteration."""
    last = max([len(r) for r in REFERENCES.values()] + [k + 1 for rows in runs.values() for k, _, _ in rows])
    lines = ["| | " + " | ".join(f"it. {k}" for k in range(last)) + " |", "| --- |" + " --- |" * last]
    for name, values in REFERENCES.items():
        cells = [f"{m} ({lo}–{hi})" for m, lo, hi in values] + [""] * (last - len(values))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for label, rows in runs.items():
        by_k = {k: (mean, n) for k, mean, n in rows}
        cells = [f"{by_k[k][0]:.1f} ({by_k[k][1]} ep.)" if k in by_k else "" for k in range(last)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw(runs: dict[str, list[tuple[int, float, int]]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for (name, values), colour in zip(REFERENCES.items(), ("tab:gray", "tab:blue"), strict=True):
        x = (np.arange(len(values)) + 0.5) * ITERATION / 1e6
        mean, lo, hi = (np.array(v) for v in zip(*values, strict=True))
        ax.fill_between(x, lo, hi, color=colour, alpha=0.2)
        ax.plot(x, mean, color=colour, label=f"{name} (5 seeds, range)")
    for label, rows in runs.items():
        x = [(k + 0.5) * ITERATION / 1e6 for k, _, _ in rows]
        ax.plot(x, [mean for _, mean, _ in rows], marker="o", label=label)
    ax.set(xlabel="agent steps = states (millions)", ylabel="mean training-episode return per iteration",
           title="Breakout: dqn_jax beside Dopamine's published curves")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR[=LABEL]")
    parser.add_argument("--out", type=Path, default=Path("docs/images/breakout-reference.png"))
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        where, _, label = spec.partition("=")
        path = Path(where) / "rewards.csv"
        if not path.is_file():
            print(f"breakout_reference: error: {path} does not exist; give a training run's directory",
                  file=sys.stderr)
            return 2
        runs[label or Path(where).name] = iteration_means(path)
    print(table(runs))
    print(f"\nfigure: {draw(runs, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

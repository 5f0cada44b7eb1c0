"""The tutorial's two log files and its console lines.

``rewards.csv`` holds one row per training episode (episode, states, reward, mean
of the last 30); ``q_values.csv`` one row per backward sweep (episode, states and
the min / mean / max / std of the swept Q-values). Both are appended to, so a
resumed run continues them (cut back to its checkpoint first: :func:`cut_after`),
and both go to MLflow as artifacts at the end.
"""

from __future__ import annotations

import csv
import os
from collections import deque
from pathlib import Path

import numpy as np
from tqdm import tqdm

REWARD_FIELDS = ("episode", "states", "reward", "mean30")
Q_FIELDS = ("episode", "states", "q_min", "q_mean", "q_max", "q_std")


class CsvLog:
    """An append-only CSV file with a fixed header, flushed after each row."""

    def __init__(self, path: Path, fields: tuple[str, ...]):
        self.path = Path(path)
        self.fields = fields
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.writer(self._file)
        if new:
            self._writer.writerow(fields)
            self._file.flush()

    def write(self, *values) -> None:
        self._writer.writerow([_fmt(v) for v in values])
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def cut_after(path: Path, states: int) -> int:
    """Keep only the rows of a log written at or before ``states``; returns the rows dropped.

    After a crash the run resumes from its last checkpoint, and the rows written since
    would be written again; a row cut short by the crash is dropped too. The file is
    replaced atomically, so a crash here leaves the old file or the new one.
    """
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return 0
    header, body = rows[0], rows[1:]
    column = header.index("states")
    kept = [row for row in body if len(row) == len(header) and _at_or_before(row[column], states)]
    if len(kept) == len(body):
        return 0
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows([header, *kept])
    os.replace(tmp, path)
    return len(body) - len(kept)


def _at_or_before(value: str, states: int) -> bool:
    try:
        return int(value) <= states
    except ValueError:  # a row cut short by a crash
        return False


def read_rewards(path: Path) -> list[float]:
    """The episode rewards of a reward log, to restore the running mean on resume."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [float(row["reward"]) for row in csv.DictReader(f)]


class RewardWindow:
    """The last ``size`` episode scores and their mean (0 when empty)."""

    def __init__(self, size: int = 30, history=()):
        self.scores: deque[float] = deque(history, maxlen=size)

    def add(self, score: float) -> float:
        self.scores.append(float(score))
        return self.mean

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores)) if self.scores else 0.0


def episode_line(episode: int, states: int, epsilon: float, reward: float, mean: float) -> str:
    return f"{episode:6d}:{states:<10d} epsilon {epsilon:5.3f}  reward {reward:7.1f}  mean of last 30 {mean:7.2f}"


def test_event_line(game: int, episode: int, states: int, q: np.ndarray, lives: int,
                    reward: float, mean30: float) -> str:
    """A test event (reward, life lost, episode end); ``mean30``: of the last 30 finished episodes."""
    return (f"game {game:2d} episode {episode:4d}:{states:<9d} Q-min {q.min():7.3f}  "
            f"Q-max {q.max():7.3f}  lives {lives}  reward {reward:6.1f}  mean of last 30 {mean30:7.2f}")


def summary(scores: list[float]) -> dict[str, float]:
    """min / mean / max / std of episode scores, as the tutorial reports a test."""
    values = np.asarray(scores, dtype=np.float64)
    return {
        "episodes": float(values.size),
        "min_score": float(values.min()),
        "mean_score": float(values.mean()),
        "max_score": float(values.max()),
        "std_score": float(values.std()),
    }


class TrainingLog:
    """Where the training loop reports, so the loop itself formats nothing.

    An episode goes to ``rewards.csv``, to the tracker (``episode/*``) and to the
    console; a learning cycle's sweep to ``q_values.csv``, its metrics to the tracker
    and a summary line to the console. Progress bars show while the memory fills and
    while optimising. ``console=False`` keeps the console quiet (the files and the
    tracker still get everything).
    """

    def __init__(self, run_dir: Path, tracker, reward_history=(), console: bool = True):
        self.tracker, self.run_dir = tracker, Path(run_dir)
        self.console = console
        self.window = RewardWindow(30, reward_history)
        self._rewards = CsvLog(Path(run_dir) / "rewards.csv", REWARD_FIELDS)
        self._q_values = CsvLog(Path(run_dir) / "q_values.csv", Q_FIELDS)

    def say(self, line: str) -> None:
        if self.console:
            tqdm.write(line)

    def episode(self, episode: int, states: int, epsilon: float, score: float) -> None:
        mean30 = self.window.add(score)
        self._rewards.write(episode, states, score, mean30)
        self.tracker.log_metrics({"episode/score": score, "episode/mean30": mean30,
                                  "episode/epsilon": epsilon, "episode/count": episode}, step=states)
        self.say(episode_line(episode, states, epsilon, score, mean30))

    def targets(self, episode: int, states: int, stats: dict[str, float]) -> None:
        self._q_values.write(episode, states, *(stats[k] for k in Q_FIELDS[2:]))

    def cycle(self, cycle: int, states: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(metrics, step=states)
        line = f"cycle {cycle}: {metrics['cycle/iterations']:.0f} batches"
        if "cycle/epochs" in metrics:
            line += f" ({metrics['cycle/epochs']:.2f} epochs)"
        if "cycle/loss" in metrics:
            line += f", loss {metrics['cycle/loss']:.4f}, Q mean {metrics['q/mean']:.3f}"
        self.say(f"{line}, learning rate {metrics['cycle/learning_rate']:.2e}")

    def playing(self, cycle: int, states: int) -> tqdm:
        """A progress bar for filling the memory (``update(n)`` per step, ``close()``)."""
        return tqdm(total=states, desc=f"cycle {cycle}: playing", unit="state", leave=False,
                    disable=not self.console)

    def optimising(self, cycle: int):
        """A progress callback for the optimise loop, and the function that ends its bar."""
        bar = tqdm(desc=f"cycle {cycle}: optimising", unit="batch", leave=False, disable=not self.console)

        def progress(done: int, total: int, mean_loss: float) -> None:
            bar.total, bar.n = total, done
            bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=True)

        return progress, bar.close

    def close(self) -> None:
        self._rewards.close()
        self._q_values.close()

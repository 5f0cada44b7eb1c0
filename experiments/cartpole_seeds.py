"""The CartPole learning checks on several seeds: the evidence behind each bar in
``tests/test_learning.py`` (recorded in docs/results.md).

    python experiments/cartpole_seeds.py --seeds 0 1 2 3 4 --jobs 2

Each run is ``python -m dqn_jax RECIPE seed=S`` in a directory of its own (its own
embedded MLflow store); the table gives each run's test mean, min and wall time, read
back from MLflow as the test reads it, and how fast it learned (from its rewards.csv).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

RECIPES = ["experiment=cartpole", "experiment=cartpole_dqn",
           "experiment=cartpole_dqn algorithm=double_dqn", "experiment=cartpole_sweep_dqn"]


def _start(recipe: str, seed: int, root: Path) -> subprocess.Popen:
    root.mkdir(parents=True)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "dqn_jax", *recipe.split(), f"seed={seed}",
               f"paths.root={root}", "progress=false"]
    with open(root / "out.txt", "w") as out:
        return subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)


def _score(root: Path) -> dict:
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns.db")
    (run,) = client.search_runs([client.get_experiment_by_name("dqn_jax/CartPole-v1").experiment_id])
    return run.data.metrics


def _learning_speed(root: Path, bar: float = 400.0) -> str:
    """How fast it learned, from the run's rewards.csv: the states played when the mean of
    the last 30 training episodes first reached ``bar``, and the mean of all its episodes."""
    (path,) = root.glob("runs/*/*/rewards.csv")
    rows = list(csv.DictReader(path.open()))
    reached = next((int(r["states"]) for r in rows if float(r["mean30"]) >= bar), None)
    mean = sum(float(r["reward"]) for r in rows) / max(len(rows), 1)
    return f"mean of 30 at {bar:.0f} after {reached or 'never'} states, training mean {mean:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (each keeps about a core busy)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="cartpole-seeds-")))
    args = parser.parse_args()
    queue = [(recipe, seed) for recipe in args.recipes for seed in args.seeds]
    running: dict = {}
    while queue or running:
        while queue and len(running) < args.jobs:
            recipe, seed = queue.pop(0)
            root = args.out / f"{recipe.replace(' ', '_').replace('=', '-')}_seed{seed}"
            running[(recipe, seed)] = (root, _start(recipe, seed, root), time.perf_counter())
        time.sleep(1)
        for key, (root, process, start) in list(running.items()):
            if process.poll() is None:
                continue
            del running[key]
            wall = time.perf_counter() - start
            if process.returncode != 0:
                print(f"{key[0]} seed={key[1]}: exit {process.returncode} (see {root}/out.txt)", flush=True)
                continue
            m = _score(root)
            print(f"{key[0]} seed={key[1]}: test mean {m['test/mean_score']:.2f} "
                  f"min {m['test/min_score']:.0f} over {m['test/episodes']:.0f} episodes, "
                  f"{wall:.0f} s; {_learning_speed(root)}", flush=True)


if __name__ == "__main__":
    main()

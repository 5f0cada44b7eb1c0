"""The addresses that open the MLflow UI on the training runs, not on MLflow 3's GenAI view.

MLflow 3's UI starts in its "GenAI" mode (an experiment opens on traces and token
usage). The query parameter ``workflowType=machine_learning`` switches it to "Model
training" (an experiment opens on its runs), and ``compareRunsMode=CHART`` shows their
metric charts. ``make ui`` prints these addresses for every experiment of the store
before it starts ``mlflow ui`` on the store that ``--print-uri`` names::

    python -m dqn_jax.tracking.ui [--root .] [--port 5000]
    python -m dqn_jax.tracking.ui [--root .] --print-uri    # the embedded store's URI, only
"""

from __future__ import annotations

import argparse
import sqlite3
from pathlib import Path

from dqn_jax.tracking import store

TRAINING = "workflowType=machine_learning"
CHARTS = "compareRunsMode=CHART"


def experiments_address(base: str) -> str:
    return f"{base}/#/experiments?{TRAINING}"


def runs_address(base: str, experiment_id: str) -> str:
    """An experiment's runs with their charts, in the UI's "Model training" mode."""
    return f"{base}/#/experiments/{experiment_id}/runs?{TRAINING}&{CHARTS}"


def experiments(db: Path) -> list[tuple[str, str]]:
    """(id, name) of the active experiments of an SQLite store, read-only; [] if there is none."""
    if not db.is_file():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            rows = connection.execute("SELECT experiment_id, name FROM experiments "
                                      "WHERE lifecycle_stage = 'active' ORDER BY experiment_id").fetchall()
    except sqlite3.Error:
        return []
    return [(str(i), n) for i, n in rows if n != "Default"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dqn_jax.tracking.ui",
                                     description="Print the MLflow UI addresses of the training runs.")
    parser.add_argument("--root", default=".", help="the project root of the embedded store (paths.root)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="5000")
    parser.add_argument("--print-uri", action="store_true", help="print the store's URI (for mlflow ui), only")
    args = parser.parse_args(argv)
    uri = store.store_uri(args.root)
    if args.print_uri:
        print(uri)
        return 0
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI (training runs): {experiments_address(base)}")
    for experiment_id, name in experiments(store.sqlite_file(uri)):
        print(f"  {name}: {runs_address(base, experiment_id)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

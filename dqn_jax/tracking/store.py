"""The MLflow tracking store: where it is, the client that talks to it, and a search over it.

Every module that needs the store's address, a client or "runs of every experiment"
asks here: :func:`tracking_uri` (a run's store, from its config), :func:`store_uri`
(the embedded store under a project root), :func:`default_uri` (commands given no
store: ``$MLFLOW_TRACKING_URI``, else the embedded one), :func:`client`, :func:`search_runs`.

Imports only :mod:`dqn_jax.config`, so every tracking module can use it.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from dqn_jax.config import PathsConfig

STORE_FILE = PurePosixPath(PathsConfig.mlflow_db).name  # "mlruns.db": the embedded store under paths.root
EXPERIMENTS_PER_SEARCH = 100  # MLflow's search_runs takes at most 100 experiments
MAX_RUNS = 5000  # per search call


def sqlite_uri(path: str | Path) -> str:
    """The URI of the SQLite store at ``path`` (made absolute)."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def sqlite_file(uri: str) -> Path | None:
    """The file of an ``sqlite:///`` store; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def store_uri(root: str | Path = ".") -> str:
    """The embedded store of the project root ``root`` (``paths.root``)."""
    return sqlite_uri(Path(root) / STORE_FILE)


def default_uri(root: str | Path = ".") -> str:
    """For a command given no store: ``$MLFLOW_TRACKING_URI``, else the embedded store under ``root``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or store_uri(root)


def tracking_uri(cfg, run_dir: str | Path | None = None) -> str:
    """The configured tracking URI, else the embedded SQLite store at ``paths.mlflow_db``.

    With ``run_dir`` (a finished run read back), a relative ``paths.mlflow_db`` that is not
    found here is taken relative to the directory the run started in: the one that
    ``paths.runs`` places ``run_dir`` under (``runs/<game>/<name>``).
    """
    if cfg.logger.tracking_uri:
        return str(cfg.logger.tracking_uri)
    db = Path(cfg.paths.mlflow_db).expanduser()
    if run_dir is None or db.is_absolute() or db.exists():
        return sqlite_uri(db)
    runs = Path(cfg.paths.runs)
    if not runs.is_absolute() and ".." not in runs.parts:
        parents = Path(run_dir).resolve().parents
        depth = len(runs.parts) + 1  # runs/<game>/<name>
        if depth < len(parents):
            return sqlite_uri(parents[depth] / db)
    return sqlite_uri(db)


def client(store, *, existing: bool = False):
    """An ``MlflowClient`` for ``store``: a tracking URI, or a config (its :func:`tracking_uri`).

    ``existing``: None instead where ``store`` is an SQLite file that is not there (a command
    that only reads runs must not leave an empty store behind).
    """
    from mlflow.tracking import MlflowClient

    uri = store if isinstance(store, str) else tracking_uri(store)
    db = sqlite_file(uri)
    if existing and db is not None and not db.is_file():
        return None
    return MlflowClient(uri)


def search_runs(mlflow_client, filter_string: str) -> list:
    """The runs that match ``filter_string`` in every experiment of the store."""
    ids = [e.experiment_id for e in mlflow_client.search_experiments()]
    runs = []
    for start in range(0, len(ids), EXPERIMENTS_PER_SEARCH):
        runs += mlflow_client.search_runs(ids[start:start + EXPERIMENTS_PER_SEARCH],
                                          filter_string=filter_string, max_results=MAX_RUNS)
    return runs

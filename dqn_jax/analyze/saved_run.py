"""A finished run, found again: its directory, config, MLflow run and checkpoint.

A training run leaves ``runs/<game>/<name>/`` with ``config.yaml`` (the resolved
config), ``mlflow_run_id`` when it was tracked, ``rewards.csv``, ``q_values.csv``
and ``checkpoints/``. :class:`SavedRun` reads these back for the analysis pictures:
the config rebuilds the network, the checkpoint gives its parameters, and the MLflow
store gives the per-cycle metrics that only it holds (loss, iterations, signals...).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from dqn_jax import algorithms, tracking
from dqn_jax.config import Config, ConfigError, from_yaml, validate
from dqn_jax.runner.checkpoints import Checkpointer
from dqn_jax.tracking import store


class RunError(ValueError):
    """A run that cannot be analysed; the message is one line for the user."""


def load_config(run_dir: Path) -> Config:
    """The run's config from its ``config.yaml``, checked like a new run's."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a training run's directory (it has no config.yaml); "
                       "give runs/<game>/<name> or run_id=<MLflow run id>")
    try:
        cfg = from_yaml(OmegaConf.load(path))
        validate(cfg)
    except (ConfigError, ValueError) as err:
        raise RunError(f"{path} is not a valid dqn_jax config: {str(err).splitlines()[0]}") from None
    return cfg


class SavedRun:
    """One training run's directory and what it points to."""

    def __init__(self, run_dir: str | Path, tracking_uri: str | None = None):
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise RunError(f"there is no run directory {self.run_dir}; give runs/<game>/<name> "
                           "or run_id=<MLflow run id>")
        self.cfg = load_config(self.run_dir)
        self.run_id = tracking.read_run_id(self.run_dir)
        self.tracking_uri = tracking_uri or store.tracking_uri(self.cfg, self.run_dir)
        self._client = None

    @classmethod
    def from_run_id(cls, run_id: str, tracking_uri: str | None = None) -> SavedRun:
        """The run directory that MLflow run ``run_id`` was tracked from (tag dqn_jax.run_dir)."""
        from mlflow.exceptions import MlflowException

        uri = tracking_uri or store.default_uri()
        client = store.client(uri, existing=True)
        if client is None:
            raise RunError(f"there is no MLflow store at {store.sqlite_file(uri)}; "
                           "run from the project root or give tracking_uri=...")
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise RunError(f"no run with id {run_id!r} in the store {uri}") from None
        where = run.data.tags.get("dqn_jax.run_dir")
        if not where:
            raise RunError(f"run {run_id} has no dqn_jax.run_dir tag; is it a dqn_jax training run?")
        run_dir = Path(where)
        if not (run_dir / "config.yaml").is_file() and (run_dir.parent / "config.yaml").is_file():
            run_dir = run_dir.parent  # a test run: its directory is <run_dir>/test
        return cls(run_dir, tracking_uri=uri)

    @property
    def client(self):
        """An MlflowClient for the run's store, or None (not tracked, or no store)."""
        if self._client is None and self.run_id:
            self._client = store.client(self.tracking_uri, existing=True)
        return self._client

    def tracked(self) -> bool:
        """True when the run's MLflow run exists in its store."""
        from mlflow.exceptions import MlflowException

        if self.client is None:
            return False
        try:
            self.client.get_run(self.run_id)
        except MlflowException:
            return False
        return True

    def histories(self, names) -> dict:
        """``{name: (steps, values)}`` of the run's MLflow metrics that exist, sorted by step."""
        import numpy as np

        out = {}
        if not self.tracked():
            return out
        for name in names:
            history = sorted(self.client.get_metric_history(self.run_id, name), key=lambda m: m.step)
            if history:
                out[name] = (np.array([m.step for m in history], float),
                             np.array([m.value for m in history], float))
        return out

    def log_files(self, paths, artifact_path: str = "analysis") -> bool:
        """Log the files to the run's MLflow run; False if the run is not tracked."""
        if not self.tracked():
            return False
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        return True

    def restore(self, games):
        """(network, train state, counters) of the latest checkpoint, for ``games``' shapes
        (a DQN run's train state holds its target network too)."""

        with Checkpointer(self.run_dir / "checkpoints", self.cfg.checkpoint.keep) as checkpointer:
            step = checkpointer.latest_step()
            if step is None:
                raise RunError(f"there is no checkpoint in {self.run_dir / 'checkpoints'}")
            parts = algorithms.make_parts(self.cfg, games, self.cfg.seed)
            algorithm = algorithms.build(self.cfg, parts, games)
            try:
                state, _, counters = checkpointer.restore(algorithm.init(parts.train_state), step)
            except Exception as err:  # Orbax raises many kinds for a damaged or foreign file
                raise RunError(f"the checkpoint at {step} states in {checkpointer.directory} cannot "
                               f"be read ({type(err).__name__})") from None
        return parts.network, algorithm.train_state(state), {k: int(v) for k, v in counters.items()}

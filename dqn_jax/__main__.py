"""The command line: ``python -m dqn_jax [overrides]`` (Hydra).

Bad input (a misspelt key, a value of the wrong type, an unknown group option, a
value out of range) ends with one line on stderr naming what is wrong and what is
allowed, exit status 2, and nothing written. Ctrl-C, SIGTERM and SIGHUP end with one
line and status 128 + the signal's number (130, 143, 129), after training has saved its
checkpoint (:mod:`dqn_jax.runner.interrupts`). To get that line out of Hydra's
multi-line composition errors, stderr is held until the task starts; if Hydra
exits before that, the held text is folded into one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dqn_jax import config as config_module
from dqn_jax.config import ConfigError, check_missing, register_configs, validate
from dqn_jax.runner import interrupts
from dqn_jax.runner.faults import Diverged
from dqn_jax.runner.interrupts import StopRequest
from dqn_jax.sweeps import jobs as sweep_jobs

register_configs()

USAGE_ERROR = 2
RUN_FAILED = 1  # the run started and failed (training diverged)


class _HeldStderr(io.TextIOBase):
    """Collects what is written to stderr until the app releases it."""

    def __init__(self, real):
        self.real = real
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self.real.fileno()

    def isatty(self) -> bool:
        return False

    def text(self) -> str:
        return "".join(self.parts)


def _release_stderr() -> None:
    if isinstance(sys.stderr, _HeldStderr):
        held = sys.stderr
        sys.stderr = held.real
        sys.stderr.write(held.text())


def _allowed_keys(schema_name: str) -> str:
    node = getattr(config_module, schema_name, None)
    if node is None or not dataclasses.is_dataclass(node):
        return ""
    return "; allowed keys: " + ", ".join(f.name for f in dataclasses.fields(node))


def _other_algorithms(key: str) -> str:
    """Which algorithms have ``algorithm.<key>``, for a key given to one that has not."""
    owners = [name for name, schema in config_module.ALGORITHM_SCHEMAS.items()
              if key in {f.name for f in dataclasses.fields(schema)}]
    return f"; algorithm.{key} is a setting of algorithm={' or '.join(owners)}" if owners else ""


# Keys that were renamed: the old name gets a hint to the new one.
RENAMED = {
    "memory.sweep": "algorithm.target_method (auto, associative or scan)",
    "env.motion_trace": "env.encoding (motion_trace, frame_stack or frame)",
    # each algorithm's own settings moved into its group, the optimiser's into optimizer.*
    "memory.target_method": "algorithm.target_method (algorithm=hvass)",
    "memory.discount": "algorithm.discount",
    "memory.error_threshold": "algorithm.error_threshold (algorithm=hvass)",
    "memory.min_high_error_share": "algorithm.min_high_error_share (algorithm=hvass)",
    "schedule.min_epochs": "algorithm.min_epochs (algorithm=hvass)",
    "schedule.loss_window": "algorithm.loss_window (algorithm=hvass)",
    "schedule.rmsprop_decay": "optimizer.decay",
    "schedule.rmsprop_eps": "optimizer.eps",
    "schedule.rmsprop_initial_scale": "optimizer.initial_scale",
    "schedule.rmsprop_centered": "optimizer.centered",
    "algorithm.target_copy_every": "algorithm.target_copy_states (counted in states, not gradient steps: x train_every)",
}


def one_line(text: str) -> str:
    """Fold Hydra's / OmegaConf's multi-line error into one line for the user."""
    lines = [line.strip() for line in text.splitlines()]
    kept = []
    for line in lines:
        if not line or line.startswith(("Set the environment variable HYDRA_FULL_ERROR",
                                        "reference_type=", "object_type=", "To append to your")):
            continue
        kept.append(line.removeprefix("dqn_jax: error: "))  # one prefix (a sweep's store check has it)
    message = "; ".join(kept)
    message = message.split("; Config search path:")[0]  # Hydra's search path: noise to a user
    message = re.sub(r"Available options in '([^']+)':; ", r"options for \1: ", message)
    message = re.sub(r"(options for [^:]+: )(.*)", lambda m: m.group(1) + m.group(2).replace("; ", ", "), message)
    missing_key = re.search(r"Key '[^']+' not in '(\w+)'", message)
    if missing_key:
        message += _allowed_keys(missing_key.group(1))
    renamed = re.search(r"full_key: ([\w.]+)", message)
    if renamed and renamed.group(1) in RENAMED:
        message = f"{renamed.group(1)} was renamed; use {RENAMED[renamed.group(1)]}"
    elif renamed and renamed.group(1).startswith("algorithm."):
        message += _other_algorithms(renamed.group(1).removeprefix("algorithm."))
    return f"dqn_jax: error: {message}"


# An absolute path: Hydra reads a relative one against the calling module when the app is
# not run as ``python -m`` (the dqn-jax console script, a test calling main()), where
# ``conf`` is no package to import.
CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def app(cfg: DictConfig):
    _release_stderr()
    stop_request = None
    try:
        check_missing(cfg)
        settings = OmegaConf.to_object(cfg)
        validate(settings)
        _request_devices(settings)
        from dqn_jax.app import run  # JAX and the games load only for a valid config

        with interrupts.stop_request() as stop_request, _marked_running():
            stop_request.grace = settings.stop_grace_seconds
            stop_request.check()  # Ctrl-C while starting up: do not start the run
            return run(settings)
    except KeyboardInterrupt:
        if sweep_jobs.is_multirun() and not sweep_jobs.in_launching_process():
            sweep_jobs.job_stopped(stop_request)  # saved and closed: requeued (submitit), or a KILLED job
        raise
    except (ConfigError, Diverged) as err:
        if sweep_jobs.is_multirun():
            raise  # Hydra marks this job failed; the sweep's other jobs go on
        if isinstance(err, ConfigError):
            _remove_empty_run_dir(cfg)
        print(f"dqn_jax: error: {err}", file=sys.stderr)
        sys.exit(USAGE_ERROR if isinstance(err, ConfigError) else RUN_FAILED)


def _request_devices(settings) -> None:
    """CPU devices for ``algorithm.learner_devices`` (:mod:`dqn_jax.algorithms.learners`),
    asked for before JAX starts."""
    learners = getattr(settings.algorithm, "learner_devices", 0)
    if learners:
        from dqn_jax.algorithms.learners import request_host_devices

        request_host_devices(learners)


def _marked_running():
    """A sweep job in a worker process is marked running, so a stop signal to the launching
    process reaches it (:func:`dqn_jax.sweeps.jobs.stop_running_jobs`)."""
    if not sweep_jobs.is_multirun() or sweep_jobs.in_launching_process():
        return contextlib.nullcontext()
    hydra_cfg = HydraConfig.get()
    return sweep_jobs.running_job(hydra_cfg.sweep.dir, hydra_cfg.job.num)


def _remove_empty_run_dir(cfg: DictConfig) -> None:
    """Hydra creates the run directory before the task starts: a rejected command removes
    it again, and the parents it made, if nothing was written there."""
    root = Path(cfg.paths.root).resolve()
    folder = Path(HydraConfig.get().runtime.output_dir).resolve()
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()  # only an empty directory
        except OSError:
            return
        folder = folder.parent


def main() -> None:
    held = _HeldStderr(sys.stderr)
    sys.stderr = held
    try:
        with StopRequest() as stop_request:  # from the start: no Ctrl-C is lost
            app()
            stop_request.check()  # pressed after the last check, e.g. while closing the run
    except SystemExit as stop:
        if sys.stderr is held and stop.code not in (0, None) and held.text().strip():
            sys.stderr = held.real
            print(one_line(held.text()), file=sys.stderr)
            raise SystemExit(USAGE_ERROR) from None
        raise
    except KeyboardInterrupt:
        _release_stderr()
        name = interrupts.signal_name(stop_request.signum)
        what = "interrupted" if name == "SIGINT" else f"stopped by {name}"
        print(f"dqn_jax: {what} (a training run resumes from its last checkpoint: run the same "
              "command again)", file=sys.stderr)
        raise SystemExit(stop_request.exit_status) from None
    finally:
        _release_stderr()


if __name__ == "__main__":
    main()

"""Pictures and videos of a finished training run, written to ``<run_dir>/analysis/``.

    python -m dqn_jax.analyze runs/breakout/default
    python -m dqn_jax.analyze run_id=<MLflow run id> [tracking_uri=...]
    python -m dqn_jax.analyze runs/breakout/default states=8 episodes=2 gif=true

From the run's own data: the training curves (its logs and MLflow metrics); from its
latest checkpoint, a replay memory played the way training would at that point with its
targets (the tutorial's method: the backward sweep's; DQN: the TD targets), a grid of
the states of largest estimation error and one of random states; the first
convolution's filters and every convolution's output for the state of largest error
(the dense weights for an MLP); and test episodes as videos with the
Q-values beside the frames. Every file is logged to the run's MLflow run under
``analysis/``. Bad input ends with one line and exit status 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from dqn_jax.analyze import pictures, probe
from dqn_jax.analyze.saved_run import RunError, SavedRun
from dqn_jax.config import ConfigError, num_envs
from dqn_jax.envs import make_games
from dqn_jax.runner.interrupts import StopRequest, signal_name

USAGE_ERROR = 2
OUT_DIR = "analysis"
OPTIONS = {  # name: (type, default, help)
    "run_id": (str, None, "the training run's MLflow run id, instead of a run directory"),
    "tracking_uri": (str, None, "the MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlruns.db)"),
    "states": (int, 12, "panels in each states grid"),
    "columns": (int, 4, "panels per row of the states grids"),
    "memory": (int, 800, "states played into the replay memory (all games together)"),
    "episodes": (int, 1, "test episodes recorded as videos (0: none)"),
    "video_steps": (int, 3000, "at most this many steps in one video"),
    "gif": (bool, False, "write a GIF beside each MP4"),
    "q_values": (bool, True, "draw the Q-value of each action beside the video frames"),
    "seed": (int, 0, "seed of the games, the random states and the actions"),
    "log": (bool, True, "log the files to the run's MLflow run"),
}
USAGE = ("usage: python -m dqn_jax.analyze RUN_DIR | run_id=ID [" +
         "] [".join(f"{k}=..." for k in OPTIONS if k != "run_id") + "]")


def parse_args(argv: list[str]) -> dict:
    """``RUN_DIR`` and ``key=value`` options; RunError naming what is wrong."""
    options = {name: default for name, (_, default, _) in OPTIONS.items()}
    options["run_dir"] = None
    for arg in argv:
        if "=" not in arg:
            if options["run_dir"] is not None:
                raise RunError(f"two run directories given ({options['run_dir']} and {arg}); give one")
            options["run_dir"] = arg
            continue
        key, value = arg.split("=", 1)
        if key not in OPTIONS:
            raise RunError(f"unknown option {key!r}; allowed: {', '.join(OPTIONS)}")
        kind = OPTIONS[key][0]
        options[key] = _convert(key, value, kind)
    if (options["run_dir"] is None) == (options["run_id"] is None):
        raise RunError("give a run directory (runs/<game>/<name>) or run_id=<MLflow run id>, one of them")
    if options["states"] < 1 or options["columns"] < 1 or options["memory"] < 2 or options["video_steps"] < 1:
        raise RunError("states, columns and video_steps must be >= 1 and memory >= 2")
    return options


def _convert(key: str, value: str, kind):
    if kind is bool:
        if value.lower() in ("true", "yes", "1"):
            return True
        if value.lower() in ("false", "no", "0"):
            return False
        raise RunError(f"{key}={value!r} is not allowed; choose true or false")
    if kind is int:
        try:
            number = int(value)
        except ValueError:
            raise RunError(f"{key}={value!r} is not an integer") from None
        if number < 0:
            raise RunError(f"{key}={number} is out of range; it must be >= 0")
        return number
    return value



# ---------------------------------------------------------------------------- the analysis

def _states_pictures(snapshot, names, options, out: Path, title: str) -> tuple[list[Path], dict]:

    largest, chosen = probe.pick_states(snapshot, options["states"], options["seed"])
    where = f"memory of {snapshot.errors.size} states, epsilon {snapshot.epsilon:.3f}"
    files, record = [], {}
    for name, flat, what in (("states-largest-error", largest, "largest estimation error"),
                             ("states-random", chosen, "random")):
        panels = probe.state_panels(snapshot, flat)
        files.append(pictures.states_grid(panels, names, out / f"{name}.png",
                                          f"{title}: {len(panels)} states of {what} ({where})",
                                          columns=options["columns"]))
        record[name] = [probe.panel_record(p, names) for p in panels]
    return files, record


def _clear_previous(out: Path) -> None:
    """Remove the files an earlier analysis listed, so none of them passes for this one's."""
    try:
        names = json.loads((out / "summary.json").read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for name in names:
        (out / Path(name).name).unlink(missing_ok=True)


def analyze(run: SavedRun, options: dict) -> tuple[list[Path], dict]:
    """Write every picture and video of ``run``; returns the files and a summary."""

    cfg, out = run.cfg, run.run_dir / OUT_DIR
    _clear_previous(out)
    title = f"{run.run_dir.parent.name}/{run.run_dir.name}"
    files = [pictures.training_curves(run.run_dir, out / "training-curves.png")]
    summary: dict = {"run_dir": str(run.run_dir), "mlflow_run_id": run.run_id}
    with make_games(cfg.env, num_envs(cfg.env), options["seed"]) as games:
        network, train_state, counters = run.restore(games)
        params, names = train_state.params, games.action_names
        summary["checkpoint"] = counters
        title = f"{title} at {counters['states']} states"
        snapshot = probe.play_memory(cfg, games, network, train_state, counters["states"],
                                     options["memory"], options["seed"])
    images = cfg.env.kind == "atari"
    if images:
        grids, summary["states"] = _states_pictures(snapshot, names, options, out, title)
        files += grids
        state = snapshot.states.reshape(-1, *snapshot.states.shape[2:])[np.argmax(snapshot.errors)]
    else:
        print("states grids and videos need image states (env.kind=atari): skipped")
        state = None
    files += probe.network_pictures(cfg, network, params, state, out, title)
    if images and options["episodes"]:
        summary["videos"] = probe.record_videos(
            cfg, network, params, names, out, episodes=options["episodes"],
            max_steps=options["video_steps"], gif=options["gif"], q_values=options["q_values"],
            seed=options["seed"])
        files += [Path(f) for video in summary["videos"] for f in video["files"]]
    summary["files"] = [str(f) for f in files]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return [*files, out / "summary.json"], summary


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE)
        for name, (_, default, text) in OPTIONS.items():
            print(f"  {name:<13} {text} (default {default})")
        return 0
    # Ctrl-C, SIGTERM, SIGHUP stop at once: the pictures are written whole or not at all
    request = StopRequest(hint=False, grace=None, at_once=True)
    try:
        with request:
            options = parse_args(argv)
            run = (SavedRun(options["run_dir"], options["tracking_uri"]) if options["run_dir"]
                   else SavedRun.from_run_id(options["run_id"], options["tracking_uri"]))
            files, _ = analyze(run, options)
    except (RunError, ConfigError) as err:
        print(f"dqn_jax.analyze: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        name = signal_name(request.signum)
        print("dqn_jax.analyze: interrupted" if name == "SIGINT" else f"dqn_jax.analyze: stopped by {name}",
              file=sys.stderr)
        return request.exit_status
    for path in files:
        print(f"wrote {path}")
    if options["log"] and run.log_files(files, OUT_DIR):
        print(f"logged {len(files)} files to MLflow run {run.run_id} under {OUT_DIR}/")
    elif options["log"]:
        print("the run is not tracked in MLflow (or its store is gone): files not logged")
    return 0


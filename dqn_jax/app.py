"""One launch of dqn_jax: build the parts from a validated config, train or test, close.

Everything that can reject the config (an unknown game, no checkpoint to test)
happens before anything is written, so a bad command leaves no trace.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import optax
from omegaconf import OmegaConf

from dqn_jax import algorithms, sweeps, tracking
from dqn_jax.algorithms import Parts, make_parts
from dqn_jax.algorithms.learners import learner_mesh
from dqn_jax.analyze import pictures, video
from dqn_jax.config import ConfigError, memory_rows, num_envs, stored_stack
from dqn_jax.core.acting import Player, state_spec
from dqn_jax.core.networks import make_network
from dqn_jax.core.schedules import SIGNAL_NAMES, ControlSignals
from dqn_jax.envs import make_games
from dqn_jax.runner import interrupts, resources, resume
from dqn_jax.runner.checkpoints import Checkpointer
from dqn_jax.runner.faults import FAILURE_TAG, Diverged, Limits
from dqn_jax.runner.logs import TrainingLog, read_rewards
from dqn_jax.runner.loop import Budget, Counters, Training, train
from dqn_jax.runner.memory_file import MemoryFile
from dqn_jax.runner.resources import describe_device
from dqn_jax.runner.testing import test


def _hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def run(cfg, run_dir: Path | None = None):
    """Train or test as ``cfg.mode`` says; returns the sweep objective (or None)."""
    run_dir = Path(run_dir) if run_dir is not None else _hydra_run_dir()
    tracking.check_store(cfg)  # an unusable tracking store: one line, before anything is built or written
    if cfg.mode == "test":
        return run_test(cfg, run_dir)
    return run_train(cfg, run_dir)


def run_train(cfg, run_dir: Path):
    games = make_games(cfg.env, num_envs(cfg.env), cfg.seed)
    tracker = tracking.NullTracker()
    checkpointer = None
    status = "FAILED"
    try:
        need = _need(cfg, games)
        resources.check_fits(cfg.memory, games.num_envs, need)
        if cfg.checkpoint.memory:
            resources.check_disk_for_memory(need, run_dir, MemoryFile(run_dir).saved_bytes())
        if getattr(cfg.algorithm, "learner_devices", 0):
            learner_mesh(cfg.algorithm.learner_devices)  # too few devices: one line, before anything is written
        parts = make_parts(cfg, games, cfg.seed)
        algorithm = algorithms.build(cfg, parts, games)
        print(f"training on {describe_device()}", flush=True)
        _say_memory_rounding(cfg.memory, games.num_envs)
        checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint.keep)
        state, key, counters = _resume(cfg, run_dir, algorithm.init(parts.train_state), parts.key, checkpointer)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        tracker = _start_tracker(cfg, run_dir, games, counters, algorithm)
        log = TrainingLog(run_dir, tracker, read_rewards(run_dir / "rewards.csv")[-30:], console=cfg.progress)
        training = build_training(cfg, games, parts, algorithm, checkpointer, log)
        state, key, result = train(training, state=state, key=key, counters=counters, seed=cfg.seed)
        summary = _summary(cfg, games, parts, algorithm.train_state(state), key, result)
        tracker.log_metrics(summary, step=counters.states)
        status = "KILLED" if result.stopped_by == "interrupt" else "FINISHED"
        _print_summary(f"training stopped ({result.stopped_by})", {**asdict(counters), **summary})
        if result.stopped_by == "interrupt":
            raise KeyboardInterrupt  # the checkpoint is saved; the command ends with status 130
        return summary.get(cfg.objective)
    except KeyboardInterrupt as stop:
        status = tracking.run_status(stop)
        tracker.set_tags({interrupts.STOP_TAG: _stop_signal()})
        raise
    except Diverged as err:
        tracker.set_tags({FAILURE_TAG: str(err)})
        raise
    finally:
        _close_run(tracker, run_dir, status, checkpointer, cfg)
        games.close()


def _say_memory_rounding(memory_cfg, games: int) -> None:
    held = memory_rows(memory_cfg, games) * games
    if held != memory_cfg.size:
        print(f"memory.size={memory_cfg.size} holds {held} states: a whole number of rows of {games} games")


def _start_tracker(cfg, run_dir: Path, games, counters: Counters, algorithm):
    """The run's tracker: its params on a fresh run (the control signals the algorithm does
    not read left out), a tag where a resume continues it."""
    tracker = tracking.start_tracker(cfg, run_dir, run_name=sweeps.child_run_name(_run_name(cfg), cfg),
                                     parent_run_id=sweeps.sweep_parent_run_id(), resume=cfg.checkpoint.resume)
    if counters.states:
        tracker.set_tags({"dqn_jax.resumed_at_states": str(counters.states)})
    else:
        tracker.log_params(run_params(cfg, games, algorithm))
    return tracker


def run_params(cfg, games, algorithm) -> dict[str, str]:
    """A training run's MLflow params: its config (only the chosen algorithm's group, and only
    the control signals it reads) and the values derived from the games."""
    params = {name: value for name, value in tracking.flatten_config(cfg).items()
              if not _unread_signal(name, algorithm)}
    return {**params, "derived.num_envs": str(games.num_envs), "derived.num_actions": str(games.num_actions)}


def _unread_signal(param: str, algorithm) -> bool:
    """A control signal's setting (schedule.<signal>.*) the algorithm never reads."""
    parts = param.split(".")
    return (len(parts) > 2 and parts[0] == "schedule" and parts[1] in SIGNAL_NAMES
            and parts[1] not in algorithm.signal_names)


def build_training(cfg, games, parts: Parts, algorithm, checkpointer: Checkpointer, log: TrainingLog) -> Training:
    """What the training loop needs, from plain values of the config."""
    signals = ControlSignals.from_config(cfg.schedule)
    player = Player(parts.network, cfg.env, signals.epsilon, cfg.memory.reward_clip)
    return Training(algorithm, games, player, checkpointer, log, Budget(cfg.steps, cfg.episodes),
                    cfg.memory.reward_clip, Limits.from_config(cfg), after_cycle=curves_every(log, 300),
                    memory_file=MemoryFile(log.run_dir) if cfg.checkpoint.memory else None)


def curves_every(log: TrainingLog, seconds: float):
    """After a cycle: the run's training curves, redrawn and logged at most every ``seconds``."""
    return lambda: pictures.log_training_curves(log.tracker, log.run_dir, every_seconds=seconds)


def _need(cfg, games) -> resources.Need:
    """What the replay memory and the network will take, from their shapes alone."""
    shape, dtype = state_spec(cfg.env, games.observation_shape, games.observation_dtype)
    extra = algorithms.ALGORITHMS[cfg.algorithm.name].extra_network_copies
    copies = resources.NETWORK_COPIES + extra * resources.TARGET_COPIES
    return resources.estimate(cfg.memory, games.num_envs, shape, dtype, games.num_actions,
                              make_network(cfg.network, games.num_actions), np.zeros((1, *shape), dtype), copies,
                              stack=stored_stack(cfg))


def _resume(cfg, run_dir: Path, fresh_state, fresh_key, checkpointer: Checkpointer):
    """(algorithm state, key, counters): the newest readable checkpoint's, else fresh ones.

    Whatever was logged after that checkpoint (a crash came before the next one, or
    before the first) is dropped from the logs, so the steps played again are logged
    once (:mod:`dqn_jax.runner.resume`).
    """
    if not cfg.checkpoint.resume:
        return fresh_state, fresh_key, Counters()
    restored = checkpointer.restore_newest_readable(fresh_state)
    state, key, saved = restored or (fresh_state, fresh_key, {})
    counters = Counters(**{k: int(v) for k, v in saved.items()})
    dropped = resume.cut_logs(run_dir, counters.states)
    if cfg.logger.name != "none":
        tracking.send_unsent(cfg, run_dir)  # what an outage kept, before the history is cut back
        resume.restart_history(tracking.store.client(cfg), run_dir, counters.states)
    if restored is not None:
        print(f"resuming from {run_dir / 'checkpoints'}: {counters.states} states, {counters.episodes} "
              f"episodes" + (f" ({dropped} log rows written after it dropped)" if dropped else ""))
    return state, key, counters


def _summary(cfg, games, parts: Parts, train_state, key, result) -> dict:
    """The run's final figures: training's, and a test's when one is asked for."""
    counters = result.counters
    summary = {"train/mean30": result.last_mean30, "train/states": float(counters.states),
               "train/episodes": float(counters.episodes)}
    if result.last_loss is not None:
        summary["train/loss"] = result.last_loss
    if cfg.test_episodes_after_training and result.stopped_by != "interrupt":
        test_player = Player(parts.network, cfg.env, optax.constant_schedule(cfg.schedule.epsilon_test))
        stats = test(games=games, player=test_player, params=train_state.params, key=key,
                           episodes=cfg.test_episodes_after_training, seed=cfg.seed, progress=cfg.progress)
        summary.update({f"test/{k}": v for k, v in stats.items()})
    return summary


def run_test(cfg, run_dir: Path):
    checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint.keep)
    steps = checkpointer.all_steps()
    if not steps:
        raise ConfigError(f"there is no checkpoint to test in {run_dir / 'checkpoints'}; train first "
                          f"with the same env= and name= (python -m dqn_jax env=... name={cfg.name})")
    episodes = cfg.episodes or 30
    sink = video.open_sink(cfg, run_dir, episodes=cfg.video_episodes, gif=cfg.video_gif,
                             q_values=cfg.video_q_values, per_episode=True)  # may reject render=true
    games = make_games(cfg.env, min(num_envs(cfg.env), episodes), cfg.seed)
    if sink is not None:
        sink.action_names = games.action_names
    parts = make_parts(cfg, games, cfg.seed)
    fresh = algorithms.build(cfg, parts, games).init(parts.train_state)
    tracker = tracking.NullTracker()
    status = "FAILED"
    try:
        tracker = tracking.start_tracker(cfg, run_dir / "test", run_name=f"{_run_name(cfg)}-test",
                                         parent_run_id=tracking.read_run_id(run_dir), resume=False)
        tracker.log_params({"test.episodes": episodes, "test.epsilon": cfg.schedule.epsilon_test,
                            "test.checkpoints": cfg.test_checkpoints})
        player = Player(parts.network, cfg.env, optax.constant_schedule(cfg.schedule.epsilon_test))
        chosen = steps if cfg.test_checkpoints == "all" else steps[-1:]
        stats = {}
        for step in chosen:
            state, key, counters = checkpointer.restore(fresh, step)
            stats = test(games=games, player=player, params=state.train.params, key=key,
                               episodes=episodes, seed=cfg.seed, progress=cfg.progress, max_states=cfg.steps,
                               frame_sink=sink if step == steps[-1] else None)
            tracker.log_metrics({f"test/{k}": v for k, v in stats.items()}, step=int(counters["states"]))
            _print_summary(f"test of the checkpoint at {int(counters['states'])} states", stats)
        status = "FINISHED"
        return stats.get(cfg.objective.removeprefix("test/"))
    except KeyboardInterrupt as stop:
        status = tracking.run_status(stop)
        tracker.set_tags({interrupts.STOP_TAG: _stop_signal()})
        raise
    finally:
        with interrupts.stop_request() as stop_request, stop_request.deferred():  # a second signal: no cut
            if sink is not None:
                sink.close()
                for path in getattr(sink, "paths", []):
                    tracker.log_artifact(path, "videos")
            tracker.finish(status)
            checkpointer.close()
            games.close()


def _run_name(cfg) -> str:
    return f"{cfg.env.game}-{cfg.name}"


def _stop_signal() -> str:
    active = interrupts.active()
    return interrupts.signal_name(active.signum if active is not None else None)


def _close_run(tracker, run_dir: Path, status: str, checkpointer, cfg) -> None:
    """Log the run's files and close it; a second stop signal (or the grace period running
    out) does not cut this, it skips the slow parts: the curves and the checkpoint's upload."""
    with interrupts.stop_request() as stop_request, stop_request.deferred():
        if not stop_request.forced and tracker.run_id is not None and (run_dir / "config.yaml").exists():
            tracker.flush()
            pictures.log_training_curves(tracker, run_dir)  # the run's final curves
        for name in ("config.yaml", "rewards.csv", "q_values.csv"):
            if (run_dir / name).exists():
                tracker.log_artifact(run_dir / name)
        if checkpointer is not None:
            checkpointer.wait()
            latest = checkpointer.latest_step()
            if cfg.logger.log_checkpoints and latest is not None and not stop_request.forced:
                tracker.log_artifacts(run_dir / "checkpoints" / str(latest), f"checkpoints/{latest}")
            checkpointer.close()
        tracker.finish(status)


def _print_summary(title: str, values: dict) -> None:
    width = max(len(k) for k in values)
    print(f"\n{title}")
    for name, value in values.items():
        shown = f"{value:.3f}" if isinstance(value, float) and not float(value).is_integer() else f"{value:g}"
        print(f"  {name:<{width}}  {shown}")

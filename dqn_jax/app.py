"""One launch of dqn_jax: build the parts from a validated config, train or test, close.

Everything that can reject the config (an unknown game, no checkpoint to test)
happens before anything is written, so a bad command leaves no trace.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import jax
import numpy as np
import optax
from omegaconf import OmegaConf

from dqn_jax import (
    agent,
    display,
    dqn,
    hvass,
    interrupts,
    pictures,
    resources,
    resume,
    sweeps,
    tracking,
)
from dqn_jax.checkpoints import Checkpointer
from dqn_jax.config import ConfigError, memory_rows, num_envs
from dqn_jax.envs import make_games
from dqn_jax.faults import FAILURE_TAG, Diverged, Limits
from dqn_jax.learner import Learner, create_train_state, describe_device, make_optimizer
from dqn_jax.logs import TrainingLog, read_rewards
from dqn_jax.networks import make_network
from dqn_jax.schedules import ControlSignals


def _hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


class Parts:
    """The network, optimiser and a fresh train state for the games at hand."""

    def __init__(self, cfg, games, seed: int):
        self.network = make_network(cfg.network, games.num_actions)
        self.optimizer = make_optimizer(cfg.schedule.rmsprop_decay, cfg.schedule.rmsprop_eps,
                                        cfg.schedule.rmsprop_initial_scale, cfg.schedule.rmsprop_centered)
        shape, dtype = agent.state_spec(cfg.env, games.observation_shape, games.observation_dtype)
        self.key, init_key = jax.random.split(jax.random.PRNGKey(seed))
        self.train_state = create_train_state(self.network, init_key, np.zeros((1, *shape), dtype),
                                              self.optimizer)
        if cfg.algorithm.name in dqn.ALGORITHMS:
            self.train_state = dqn.with_target(self.train_state)


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
        resources.check_fits(cfg.memory, games.num_envs, _need(cfg, games))
        parts = Parts(cfg, games, cfg.seed)
        print(f"training on {describe_device()}", flush=True)
        _say_memory_rounding(cfg.memory, games.num_envs)
        checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint.keep)
        train_state, key, counters = _resume(cfg, run_dir, parts, checkpointer)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        tracker = _start_tracker(cfg, run_dir, games, counters)
        log = TrainingLog(run_dir, tracker, read_rewards(run_dir / "rewards.csv")[-30:], console=cfg.progress)
        cycle = build_cycle(cfg, games, parts, checkpointer, log)
        train_state, key, result = agent.train(cycle, train_state=train_state, key=key, counters=counters,
                                               seed=cfg.seed)
        outcome = _outcome(cfg, games, parts, train_state, key, result)
        tracker.log_metrics(outcome, step=counters.states)
        status = "KILLED" if result.stopped_by == "interrupt" else "FINISHED"
        _print_summary(f"training stopped ({result.stopped_by})", {**asdict(counters), **outcome})
        if result.stopped_by == "interrupt":
            raise KeyboardInterrupt  # the checkpoint is saved; the command ends with status 130
        return outcome.get(cfg.objective)
    except KeyboardInterrupt:
        status = "KILLED"
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


def _start_tracker(cfg, run_dir: Path, games, counters: agent.Counters):
    """The run's tracker: its params on a fresh run, a tag where a resume continues it."""
    tracker = tracking.start_tracker(cfg, run_dir, run_name=sweeps.child_run_name(_run_name(cfg), cfg),
                                     parent_run_id=sweeps.sweep_parent_run_id(), resume=cfg.checkpoint.resume)
    if counters.states:
        tracker.set_tags({"dqn_jax.resumed_at_states": str(counters.states)})
    else:
        tracker.log_params({**tracking.flatten_config(cfg), "derived.num_envs": games.num_envs,
                            "derived.num_actions": games.num_actions})
    return tracker


def build_cycle(cfg, games, parts: Parts, checkpointer: Checkpointer, log: TrainingLog) -> agent.Cycle:
    """The algorithm's learning cycle, built from plain values of the config."""
    signals = ControlSignals.from_config(cfg.schedule)
    player = agent.Player(parts.network, cfg.env, signals.epsilon, cfg.memory.reward_clip)
    common = (games, player, signals, checkpointer, log, agent.Budget(cfg.steps, cfg.episodes))
    memory = {"memory_rows": memory_rows(cfg.memory, games.num_envs), "reward_clip": cfg.memory.reward_clip,
              "state": agent.state_spec(cfg.env, games.observation_shape, games.observation_dtype)}
    algo = cfg.algorithm
    if algo.name in dqn.ALGORITHMS:
        cycle = dqn.DqnCycle(*common, update=dqn_update(cfg, parts), warmup=algo.warmup,
                             train_every=algo.train_every, report_every=algo.report_every, **memory)
    else:
        learner = Learner(parts.network, parts.optimizer, batch_size=cfg.memory.batch_size,
                          error_threshold=cfg.memory.error_threshold,
                          min_high_share=cfg.memory.min_high_error_share, loss_window=cfg.schedule.loss_window)
        cycle = hvass.TutorialCycle(*common, learner=learner, discount=cfg.memory.discount,
                                    target_method=cfg.memory.target_method, min_epochs=cfg.schedule.min_epochs,
                                    **memory)
    cycle.limits = Limits.from_config(cfg)
    return cycle


def dqn_update(cfg, parts: Parts) -> dqn.Update:
    """The gradient step of ``algorithm=dqn`` or ``double_dqn``, as the config sets it."""
    algo = cfg.algorithm
    return dqn.Update(parts.network, parts.optimizer, batch_size=cfg.memory.batch_size,
                      discount=cfg.memory.discount, huber_delta=algo.huber_delta,
                      double=algo.name == "double_dqn", target_copy_every=algo.target_copy_every)


def _need(cfg, games) -> resources.Need:
    """What the replay memory and the network will take, from their shapes alone."""
    shape, dtype = agent.state_spec(cfg.env, games.observation_shape, games.observation_dtype)
    copies = resources.NETWORK_COPIES + (resources.TARGET_COPIES if cfg.algorithm.name in dqn.ALGORITHMS else 0)
    return resources.estimate(cfg.memory, games.num_envs, shape, dtype, games.num_actions,
                              make_network(cfg.network, games.num_actions), np.zeros((1, *shape), dtype), copies)


def _resume(cfg, run_dir: Path, parts: Parts, checkpointer: Checkpointer):
    """(train_state, key, counters): the newest readable checkpoint's, else fresh ones.

    Whatever was logged after that checkpoint (a crash came before the next one, or
    before the first) is dropped from the logs, so the steps played again are logged
    once (:mod:`dqn_jax.resume`).
    """
    if not cfg.checkpoint.resume:
        return parts.train_state, parts.key, agent.Counters()
    restored = checkpointer.restore_newest_readable(parts.train_state)
    train_state, key, saved = restored or (parts.train_state, parts.key, {})
    counters = agent.Counters(**{k: int(v) for k, v in saved.items()})
    dropped = resume.cut_logs(run_dir, counters.states)
    if cfg.logger.name != "none":
        from mlflow.tracking import MlflowClient

        tracking.send_unsent(cfg, run_dir)  # what an outage kept, before the history is cut back
        resume.restart_history(MlflowClient(tracking.tracking_uri(cfg)), run_dir, counters.states)
    if restored is not None:
        print(f"resuming from {run_dir / 'checkpoints'}: {counters.states} states, {counters.episodes} "
              f"episodes" + (f" ({dropped} log rows written after it dropped)" if dropped else ""))
    return train_state, key, counters


def _outcome(cfg, games, parts: Parts, train_state, key, result) -> dict:
    """The run's final figures: training's, and a test's when one is asked for."""
    counters = result.counters
    outcome = {"train/mean30": result.last_mean30, "train/states": float(counters.states),
               "train/episodes": float(counters.episodes)}
    if result.last_loss is not None:
        outcome["train/loss"] = result.last_loss
    if cfg.test_episodes_after_training and result.stopped_by != "interrupt":
        test_player = agent.Player(parts.network, cfg.env, optax.constant_schedule(cfg.schedule.epsilon_test))
        stats = agent.test(games=games, player=test_player, params=train_state.params, key=key,
                           episodes=cfg.test_episodes_after_training, seed=cfg.seed, progress=cfg.progress)
        outcome.update({f"test/{k}": v for k, v in stats.items()})
    return outcome


def run_test(cfg, run_dir: Path):
    checkpointer = Checkpointer(run_dir / "checkpoints", cfg.checkpoint.keep)
    steps = checkpointer.all_steps()
    if not steps:
        raise ConfigError(f"there is no checkpoint to test in {run_dir / 'checkpoints'}; train first "
                          f"with the same env= and name= (python -m dqn_jax env=... name={cfg.name})")
    episodes = cfg.episodes or 30
    sink = display.open_sink(cfg, run_dir, episodes=cfg.video_episodes, gif=cfg.video_gif,
                             q_values=cfg.video_q_values, per_episode=True)  # may reject render=true
    games = make_games(cfg.env, min(num_envs(cfg.env), episodes), cfg.seed)
    if sink is not None:
        sink.action_names = games.action_names
    parts = Parts(cfg, games, cfg.seed)
    tracker = tracking.NullTracker()
    status = "FAILED"
    try:
        tracker = tracking.start_tracker(cfg, run_dir / "test", run_name=f"{_run_name(cfg)}-test",
                                         parent_run_id=tracking.read_run_id(run_dir), resume=False)
        tracker.log_params({"test.episodes": episodes, "test.epsilon": cfg.schedule.epsilon_test,
                            "test.checkpoints": cfg.test_checkpoints})
        player = agent.Player(parts.network, cfg.env, optax.constant_schedule(cfg.schedule.epsilon_test))
        chosen = steps if cfg.test_checkpoints == "all" else steps[-1:]
        stats = {}
        for step in chosen:
            train_state, key, counters = checkpointer.restore(parts.train_state, step)
            stats = agent.test(games=games, player=player, params=train_state.params, key=key,
                               episodes=episodes, seed=cfg.seed, progress=cfg.progress, max_states=cfg.steps,
                               frame_sink=sink if step == steps[-1] else None)
            tracker.log_metrics({f"test/{k}": v for k, v in stats.items()}, step=int(counters["states"]))
            _print_summary(f"test of the checkpoint at {int(counters['states'])} states", stats)
        status = "FINISHED"
        return stats.get(cfg.objective.removeprefix("test/"))
    except KeyboardInterrupt:
        status = "KILLED"
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

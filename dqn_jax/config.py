"""The typed configuration schema, its validation, and the values derived from it.

Hydra composes ``conf/`` into :class:`Config`; a misspelt key or a value of the
wrong type fails at composition. :func:`validate` then checks what types cannot
(ranges, known choices) and raises :class:`ConfigError` with one line naming the
key and what it allows. Derived values (the number of games, the replay memory's
shape) are computed by functions here and never written back into the config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class ConfigError(ValueError):
    """A configuration value that is wrong; the message is one line for the user."""


@dataclass
class SignalConfig:
    """A linear control signal: ``start`` until ``begin`` states, then to ``end`` over ``span``
    states, then ``end``."""

    start: float = MISSING
    end: float = MISSING
    span: float = 5e6  # in states processed (count_states)
    begin: float = 0  # states before it starts to move (Dopamine holds epsilon through its warm-up)


@dataclass
class EnvConfig:
    """Which game and how its frames are made."""

    kind: str = "atari"  # "atari" (ale-py vector env, frames) or "gymnasium" (vector observations)
    game: str = "breakout"  # an ALE ROM id such as breakout, space_invaders, pong
    gym_id: str = "CartPole-v1"  # the Gymnasium id when kind=gymnasium
    num_envs: int | None = None  # games played at once; None: two per CPU core, 4 to 16
    frameskip: int = 4
    repeat_action_probability: float = 0.25  # sticky actions, the ALE v5 protocol
    height: int = 105
    width: int = 80
    full_action_space: bool = False
    fire_reset: bool = False  # press FIRE after a reset (the tutorial does not)
    lives_are_terminals: bool = True  # a lost life is a terminal for learning (atari; Dopamine: false)
    max_episode_frames: int = 108_000
    # atari only, what a state is: "motion_trace" (the frame and its motion trace, the
    # tutorial's), "frame_stack" (the last stack_size frames) or "frame" (the frame alone)
    encoding: str = "motion_trace"
    stack_size: int = 4
    trace_threshold: float = 20.0
    trace_decay: float = 0.75


@dataclass
class MemoryConfig:
    """The replay memory every algorithm records into."""

    size: int = 200_000  # states held (all games together)
    batch_size: int = 128  # states per gradient step
    reward_clip: float = 1.0  # rewards stored clipped to [-reward_clip, reward_clip]
    # "states": each state kept whole; "frames": only its newest frame, the state rebuilt from
    # the frames before it (env.encoding=frame_stack, algorithm dqn or double_dqn)
    storage: str = "states"


@dataclass
class NetworkConfig:
    """The Q-network; layer sizes are data so a test can build a tiny one."""

    name: str = "hvass"  # "hvass" (the tutorial's), "nature" or "mlp"
    conv_features: list[int] = field(default_factory=lambda: [16, 32, 64])
    conv_kernels: list[int] = field(default_factory=lambda: [3, 3, 3])
    conv_strides: list[int] = field(default_factory=lambda: [2, 2, 1])
    dense: list[int] = field(default_factory=lambda: [1024, 1024, 1024, 1024])
    init_stddev: float = 0.02  # truncated-normal initialiser; <= 0 means Flax's default
    # the weights' initialiser: "truncated_normal" (init_stddev) or "xavier_uniform" (Dopamine's)
    kernel_init: str = "truncated_normal"
    padding: str | None = None  # the convolutions': "SAME" or "VALID"; null: hvass SAME, nature VALID
    dtype: str = "float32"  # compute dtype: float32 or bfloat16 (parameters stay float32)
    # uint8 pixels into the network: "unit" divides by 255 ([0, 1]); "raw" keeps 0-255, as
    # the tutorial fed them (its small initial weights were chosen for that scale)
    input_scale: str = "unit"
    dueling: bool = False  # a dueling head (Wang et al. 2016): Q = V + A - mean(A), two dense stacks


@dataclass
class ScheduleConfig:
    """The five linear control signals and the test epsilon. An algorithm reads the ones it
    needs (DQN: epsilon and the learning rate); only those are logged as its params."""

    epsilon: SignalConfig = field(default_factory=lambda: SignalConfig(1.0, 0.1, 1e6))
    epsilon_test: float = 0.01
    learning_rate: SignalConfig = field(default_factory=lambda: SignalConfig(1e-3, 1e-5, 5e6))
    loss_limit: SignalConfig = field(default_factory=lambda: SignalConfig(0.1, 0.015, 5e6))
    max_epochs: SignalConfig = field(default_factory=lambda: SignalConfig(5.0, 10.0, 5e6))
    replay_fraction: SignalConfig = field(default_factory=lambda: SignalConfig(0.1, 1.0, 5e6))


@dataclass
class OptimizerConfig:
    """The optimiser of every gradient step (its learning rate is ``schedule.learning_rate``):
    RMSProp as TensorFlow 1 defined it (the tutorial's), or Adam."""

    name: str = "rmsprop"  # "rmsprop" or "adam"
    # rmsprop: added to the mean square inside the square root; adam: added to the root
    eps: float = 1e-10
    decay: float = 0.9  # rmsprop: the mean square's decay
    initial_scale: float = 1.0  # rmsprop: the mean square's start (TensorFlow 1: 1.0)
    centered: bool = False  # rmsprop: divide by the gradient's variance, not its second moment
    b1: float = 0.9  # adam: the first moment's decay
    b2: float = 0.999  # adam: the second moment's decay


@dataclass
class HvassConfig:
    """``algorithm=hvass``, the tutorial's method: fill the memory, recompute its Q-targets by
    the backward sweep, optimise on error-split batches in epochs until the loss limit."""

    name: str = "hvass"
    discount: float = 0.97
    # How the backward sweep recomputes the Q-targets. "auto": "scan" on a CPU (where it
    # is ~1.5x faster), "associative" on a GPU or TPU; "associative" (parallel, exact) or
    # "scan" (sequential) force one.
    target_method: str = "auto"
    error_threshold: float = 0.1  # errors below this are "low error"
    min_high_error_share: float = 0.5  # high-error share of a batch is at least this
    min_epochs: float = 1.0  # epochs before the loss-limit stop may end a cycle
    loss_window: int = 100  # batches averaged for the loss-limit stop


@dataclass
class DqnConfig:
    """``algorithm=dqn`` and ``double_dqn``, the Nature DQN: the paper's values are the
    defaults here and in conf/algorithm/dqn.yaml (batch, optimiser, learning rate)."""

    name: str = "dqn"  # "dqn" or "double_dqn"
    discount: float = 0.99
    warmup: int = 50_000  # states recorded before the first gradient step
    train_every: int = 4  # states recorded per gradient step
    # states between copies into the target network (DeepMind's code counts agent steps:
    # 10,000); a multiple of train_every
    target_copy_states: int = 10_000
    huber_delta: float | None = 1.0  # the Huber loss is quadratic within this TD error; null: (target - Q)^2
    n_step: int = 1  # rewards summed before the bootstrap (cut at a lost life or an episode's end)
    report_every: int = 50_000  # states between logged cycles (and checkpoints)
    # CPU: > 0 learns on this many host devices of its own (the batch split between them)
    # while the games go on, acting with the network one gradient step old; 0 acts and
    # learns in turn on one device (docs/benchmarks.md, "Learning beside acting")
    learner_devices: int = 0
    # prioritised replay (Schaul et al. 2016, proportional; dqn_jax/core/priorities.py): > 0
    # draws a transition with probability ∝ (|TD error| + 1e-6)^this; 0 draws uniformly
    priority_exponent: float = 0.0
    importance_exponent: float = 0.5  # β of the importance weights (P / min P)^-β (Dopamine: 0.5)


@dataclass
class SweepDqnConfig:
    """``algorithm=sweep_dqn``: DQN on targets the backward sweep recomputes over a recent window."""

    name: str = "sweep_dqn"
    discount: float = 0.99
    warmup: int = 50_000  # states recorded before the first refresh and gradient step
    train_every: int = 4  # states recorded per gradient step
    refresh_states: int = 10_000  # states between refreshes of the window's targets; a multiple of train_every
    window: int = 80_000  # the last states whose targets a refresh recomputes (and the batches come from)
    lam: float = 0.5  # λ of the sweep's targets: 1 the tutorial's recursion (diverged on CartPole), 0 one-step
    huber_delta: float | None = 1.0  # the Huber loss is quadratic within this error; null: (target - Q)^2
    report_every: int = 50_000  # states between logged cycles (and checkpoints)
    # > 0: the window's rows drawn by the priority of the errors a refresh (then each step) measured
    priority_exponent: float = 0.0
    importance_exponent: float = 0.5


# Each algorithm's typed group: conf/algorithm/<name>.yaml starts from its schema.
ALGORITHM_SCHEMAS = {"hvass": HvassConfig, "dqn": DqnConfig, "double_dqn": DqnConfig, "sweep_dqn": SweepDqnConfig}


@dataclass
class LoggerConfig:
    """Where metrics go. ``name=none`` turns tracking off."""

    name: str = "mlflow"  # "mlflow" or "none"
    tracking_uri: str | None = None  # None: the embedded store under paths.root
    experiment: str | None = None  # None: one experiment per game, "dqn_jax/<game>"
    flush_seconds: float = 2.0  # metrics are sent in batches at most this often
    log_checkpoints: bool = True


@dataclass
class FaultsConfig:
    """When a run that stays finite counts as diverged (:mod:`dqn_jax.runner.faults`)."""

    # Q-values and targets may reach q_factor x memory.reward_clip / (1 - algorithm.discount),
    # the largest discounted sum of clipped rewards; null: no bound on them
    q_factor: float | None = 10.0
    q_bound: float | None = None  # an explicit bound on |Q| instead of the one q_factor gives
    # a cycle's loss may reach loss_growth x its running level (the median of the last
    # cycles, at least reward_clip squared); null: no limit on the loss
    loss_growth: float | None = 1000.0
    loss_window: int = 10  # learning cycles in the running level
    loss_after: int = 3  # cycles before the loss is judged (the first ones set its level)


@dataclass
class CheckpointConfig:
    keep: int = 3  # checkpoints kept; older ones are deleted
    resume: bool = True  # continue from the latest checkpoint in the run directory
    # Save the replay memory with each checkpoint (the newest only, under <run_dir>/memory),
    # so that a resume learns from what it had instead of warming up again; circular
    # memories (dqn, double_dqn, sweep_dqn) only: the tutorial's is emptied every cycle.
    memory: bool = False


@dataclass
class PathsConfig:
    root: str = "."  # everything a run writes lives under this folder
    runs: str = "${paths.root}/runs"
    mlflow_db: str = "${paths.root}/mlruns.db"
    mlflow_artifacts: str = "${paths.root}/mlartifacts"


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    algorithm: Any = MISSING  # an HvassConfig, DqnConfig or SweepDqnConfig (ALGORITHM_SCHEMAS), by algorithm=
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    mode: str = "train"  # "train" or "test"
    name: str = "default"  # the run's name; the run directory is runs/<game>/<name>
    seed: int = 0
    episodes: int | None = None  # stop when this many episodes are done (train: in total)
    steps: int | None = None  # stop when this many states are processed (train: in total)
    render: bool = False  # test mode: show the game in a window
    video: bool = False  # test mode: write test-video-<k>.mp4 (game 0's episodes) into the run directory
    video_episodes: int | None = None  # test mode: video of game 0's first N episodes (None: all)
    video_gif: bool = False  # test mode: a GIF beside each MP4
    video_q_values: bool = True  # test mode: the Q-value of each action beside the frames
    progress: bool = True  # progress bars and a line per episode
    objective: str = "test/mean_score"  # what a sweep job returns (metric name)
    test_episodes_after_training: int = 0  # play this many test episodes when training ends
    test_checkpoints: str = "latest"  # test mode: "latest", or "all" for a score-over-training curve
    # after a stop signal (SIGTERM, Ctrl-C), stop at once if the run has not stopped within this
    # (a save already begun is finished); below the cluster's kill wait (Slurm, Kubernetes: 30 s)
    stop_grace_seconds: float = 25.0


def register_configs() -> None:
    """Register the schemas so ``conf/config.yaml`` and ``conf/algorithm/*.yaml`` build on them."""
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for name, schema in ALGORITHM_SCHEMAS.items():
        store.store(group="schema/algorithm", name=name, node=schema, package="algorithm")


def from_yaml(data) -> Config:
    """A :class:`Config` from a resolved config (a run's ``config.yaml``), each group typed by its
    schema; raises ConfigError when it does not fit them."""
    from omegaconf import OmegaConf

    name = OmegaConf.select(data, "algorithm.name")
    if name not in ALGORITHM_SCHEMAS:
        raise ConfigError(f"algorithm.name={name!r} is not allowed; choose one of {', '.join(ALGORITHM_SCHEMAS)}")
    schema = OmegaConf.structured(Config)
    schema.algorithm = OmegaConf.structured(ALGORITHM_SCHEMAS[name])
    return OmegaConf.to_object(OmegaConf.merge(schema, data))


SIGNALS = tuple(f.name for f in fields(ScheduleConfig) if f.type in (SignalConfig, "SignalConfig"))
CHOICES = {
    "mode": ("train", "test"),
    "algorithm.name": tuple(ALGORITHM_SCHEMAS),
    "algorithm.target_method": ("auto", "associative", "scan"),
    "optimizer.name": ("rmsprop", "adam"),
    "env.kind": ("atari", "gymnasium"),
    "env.encoding": ("motion_trace", "frame_stack", "frame"),
    "network.name": ("hvass", "nature", "mlp"),
    "network.dtype": ("float32", "bfloat16"),
    "network.input_scale": ("unit", "raw"),
    "network.kernel_init": ("truncated_normal", "xavier_uniform"),
    "memory.storage": ("states", "frames"),
    "network.padding": (None, "SAME", "VALID"),
    "logger.name": ("mlflow", "none"),
    "test_checkpoints": ("latest", "all"),
}


def check_missing(cfg) -> None:
    """Raise ConfigError naming any key left as ``???`` (for example env.game with env=atari)."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        keys = ", ".join(missing)
        raise ConfigError(f"{keys} has no value; set it on the command line, e.g. {missing[0]}=...")


_ABSENT = object()


def _get(cfg, dotted: str):
    """The value at ``dotted``; ``_ABSENT`` for a key of another algorithm's group."""
    for part in dotted.split("."):
        cfg = getattr(cfg, part, _ABSENT)
        if cfg is _ABSENT:
            return _ABSENT
    return cfg


POSITIVE = ("memory.size", "memory.batch_size", "memory.reward_clip", "env.frameskip", "env.height",
            "env.width", "env.stack_size", "checkpoint.keep", "env.num_envs", "episodes", "video_episodes", "steps",
            "algorithm.min_epochs", "algorithm.loss_window", "logger.flush_seconds",
            "algorithm.train_every", "algorithm.target_copy_states", "algorithm.huber_delta", "algorithm.n_step",
            "algorithm.report_every", "algorithm.refresh_states", "algorithm.window", "stop_grace_seconds", "faults.q_factor", "faults.q_bound",
            "faults.loss_window",
            *(f"schedule.{name}.span" for name in SIGNALS))
NOT_NEGATIVE = ("algorithm.error_threshold", "algorithm.learner_devices", "algorithm.priority_exponent",
                "algorithm.importance_exponent", "optimizer.eps", "optimizer.initial_scale",
                "algorithm.warmup", "test_episodes_after_training",
                "env.trace_threshold", "faults.loss_after",
                *(f"schedule.{name}.{end}" for name in SIGNALS for end in ("start", "end", "begin")))
UNIT_INTERVAL = ("algorithm.discount", "algorithm.lam", "algorithm.min_high_error_share", "env.repeat_action_probability",
                 "env.trace_decay", "schedule.epsilon_test", "optimizer.decay", "optimizer.b1", "optimizer.b2",
                 "schedule.epsilon.start", "schedule.epsilon.end", "schedule.replay_fraction.start",
                 "schedule.replay_fraction.end")


def validate(cfg) -> None:
    """Check what the types cannot; raise ConfigError with a one-line message."""
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value is not _ABSENT and value not in allowed:
            names = ", ".join("null" if a is None else str(a) for a in allowed)
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {names}")
    _check_ranges(cfg)
    min_epochs = _get(cfg, "algorithm.min_epochs")
    if min_epochs is not _ABSENT and min(cfg.schedule.max_epochs.start, cfg.schedule.max_epochs.end) < min_epochs:
        raise ConfigError(
            f"schedule.max_epochs (start {cfg.schedule.max_epochs.start}, end "
            f"{cfg.schedule.max_epochs.end}) must not be below algorithm.min_epochs={min_epochs}"
        )
    _check_network(cfg.network, cfg.env.kind)
    copy, every = _get(cfg, "algorithm.target_copy_states"), _get(cfg, "algorithm.train_every")
    if copy is not _ABSENT and copy % every:
        raise ConfigError(f"algorithm.target_copy_states={copy} must be a multiple of algorithm.train_every={every} "
                          "(the copy follows a gradient step)")
    learners = _get(cfg, "algorithm.learner_devices")
    if learners is not _ABSENT and learners and cfg.memory.batch_size % learners:
        raise ConfigError(f"memory.batch_size={cfg.memory.batch_size} must be a multiple of "
                          f"algorithm.learner_devices={learners} (each learner takes an equal share of a batch)")
    if learners is not _ABSENT and learners and _get(cfg, "algorithm.priority_exponent"):
        raise ConfigError(f"algorithm.priority_exponent={cfg.algorithm.priority_exponent} needs "
                          "algorithm.learner_devices=0 (prioritised batches are drawn and learnt on one device)")
    games = num_envs(cfg.env)
    window, refresh = _get(cfg, "algorithm.window"), _get(cfg, "algorithm.refresh_states")  # sweep_dqn
    if window is not _ABSENT and (refresh % every or not 0 < window // games < memory_rows(cfg.memory, games) - -(-refresh // games)):
        raise ConfigError(f"algorithm.refresh_states={refresh} must be a multiple of algorithm.train_every={every}, and algorithm.window={window} hold a row of {games} games and fit in memory.size={cfg.memory.size} beside the states written between refreshes")
    _check_storage(cfg, games)
    _check_saved_memory(cfg)
    if cfg.memory.size < 2 * games:
        raise ConfigError(
            f"memory.size={cfg.memory.size} is too small for {games} games; it must be at least "
            f"{2 * games} (two states per game)"
        )
    if cfg.memory.batch_size > cfg.memory.size:
        raise ConfigError(
            f"memory.batch_size={cfg.memory.batch_size} is larger than memory.size={cfg.memory.size}; "
            "a batch must be at most the memory's size"
        )
    if cfg.faults.loss_growth is not None and cfg.faults.loss_growth <= 1:
        raise ConfigError(f"faults.loss_growth={cfg.faults.loss_growth} is out of range; it must be > 1 "
                          "(a multiple of the loss's running level), or null for no limit")
    if cfg.render and cfg.video:
        raise ConfigError("render=true and video=true cannot be combined; choose one")


def _check_saved_memory(cfg) -> None:
    if cfg.checkpoint.memory and cfg.algorithm.name == "hvass":
        raise ConfigError("checkpoint.memory=true saves a circular memory (algorithm dqn, double_dqn or sweep_dqn); "
                          "algorithm=hvass empties its memory every cycle: use checkpoint.memory=false")


def _check_storage(cfg, games: int) -> None:
    if cfg.memory.storage != "frames":
        return
    if cfg.env.kind != "atari" or cfg.env.encoding != "frame_stack" or cfg.algorithm.name not in ("dqn", "double_dqn"):
        raise ConfigError("memory.storage=frames needs env.encoding=frame_stack and algorithm dqn or double_dqn "
                          f"(got {cfg.env.kind} {cfg.env.encoding}, {cfg.algorithm.name}); use memory.storage=states")
    rows, needed = memory_rows(cfg.memory, games), cfg.env.stack_size + cfg.algorithm.n_step
    if rows <= needed:
        raise ConfigError(f"memory.size={cfg.memory.size} holds {rows} rows of {games} games; memory.storage=frames "
                          f"needs more than env.stack_size + algorithm.n_step = {needed}")


def stored_stack(cfg) -> int:
    """Frames in a state when the memory keeps only each state's newest frame, else 1."""
    return int(cfg.env.stack_size) if cfg.memory.storage == "frames" else 1


def _check_ranges(cfg) -> None:
    for key in (*POSITIVE, *NOT_NEGATIVE):
        value = _get(cfg, key)
        if value is not None and value is not _ABSENT and (value < 0 or (value == 0 and key in POSITIVE)):
            bound = "> 0" if key in POSITIVE else ">= 0"
            raise ConfigError(f"{key}={value} is out of range; it must be {bound}")
    for key in UNIT_INTERVAL:
        value = _get(cfg, key)
        if value is not _ABSENT and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key}={value} is out of range; it must be in [0, 1]")


def _check_network(net: NetworkConfig, env_kind: str) -> None:
    if net.name != "mlp" and not len(net.conv_features) == len(net.conv_kernels) == len(net.conv_strides):
        raise ConfigError(
            "network.conv_features, network.conv_kernels and network.conv_strides must have the "
            f"same length (got {len(net.conv_features)}, {len(net.conv_kernels)}, {len(net.conv_strides)})"
        )
    if any(int(v) <= 0 for v in [*net.conv_features, *net.conv_kernels, *net.conv_strides, *net.dense]):
        raise ConfigError("network layer sizes, kernels and strides must all be > 0")
    if env_kind == "gymnasium" and net.name != "mlp":
        raise ConfigError(
            f"network={net.name} needs image frames; env.kind=gymnasium gives vector observations, "
            "so use network=mlp"
        )
    if env_kind == "atari" and net.name == "mlp":
        raise ConfigError("network=mlp takes vector observations; env.kind=atari needs hvass or nature")


def num_envs(env: EnvConfig) -> int:
    """Games played at once: the config's value, else two per core between 4 and 16."""
    if env.num_envs is not None:
        return int(env.num_envs)
    return max(4, min(16, 2 * (os.cpu_count() or 2)))


def memory_rows(memory: MemoryConfig, games: int) -> int:
    """Rows of the time x game replay memory (``memory.size`` states in all)."""
    return max(2, memory.size // games)


def experiment_name(cfg) -> str:
    """The MLflow experiment: the configured one, else one per game."""
    if cfg.logger.experiment:
        return cfg.logger.experiment
    game = cfg.env.game if cfg.env.kind == "atari" else cfg.env.gym_id
    return f"dqn_jax/{game}"

"""The config tree: every option of every group composes and validates; bad values fail clearly."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from dqn_jax.config import Config, ConfigError, check_missing, memory_rows, num_envs, validate
from tests.conftest import compose_config, group_options

GROUPS = ["env", "memory", "network", "schedule", "logger"]


def test_defaults_are_the_tutorials():
    cfg = compose_config()
    assert isinstance(cfg, Config)
    assert (cfg.env.game, cfg.env.kind, cfg.env.frameskip) == ("breakout", "atari", 4)
    assert cfg.env.repeat_action_probability == 0.25
    assert (cfg.env.height, cfg.env.width) == (105, 80)
    assert cfg.memory.size == 200_000 and cfg.algorithm.discount == 0.97 and cfg.memory.batch_size == 128
    assert cfg.network.name == "hvass" and list(cfg.network.dense) == [1024] * 4
    s = cfg.schedule
    assert (s.epsilon.start, s.epsilon.end, s.epsilon.span) == (1.0, 0.1, 1e6)
    assert (s.learning_rate.start, s.learning_rate.end, s.learning_rate.span) == (1e-3, 1e-5, 5e6)
    assert (s.loss_limit.start, s.loss_limit.end) == (0.1, 0.015)
    assert (s.max_epochs.start, s.max_epochs.end) == (5.0, 10.0)
    assert (s.replay_fraction.start, s.replay_fraction.end) == (0.1, 1.0)
    assert s.epsilon_test == 0.01
    validate(cfg)


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    options = group_options(group)
    assert options, f"conf/{group} is empty"
    for option in options:
        overrides = [f"{group}={option}"]
        if group == "env" and option == "atari":
            overrides.append("env.game=ms_pacman")
        if group == "env" and option == "cartpole":
            overrides.append("network=mlp")
        if group == "network" and option == "mlp":
            overrides.append("env=cartpole")
        cfg = compose_config(overrides)
        validate(cfg)


def test_every_experiment_recipe_composes():
    for option in group_options("experiment"):
        cfg = compose_config([f"experiment={option}"])
        validate(cfg)


def test_a_key_left_without_value_is_named():
    cfg = compose_config(["env=atari", "env.game=???"], to_object=False)
    with pytest.raises(ConfigError, match="env.game has no value"):
        check_missing(cfg)
    check_missing(compose_config(["env=atari", "env.game=pong"], to_object=False))


@pytest.mark.parametrize(
    "override, message",
    [
        (["memory.sise=5"], "sise"),
        (["memory.size=abc"], "memory.size"),
        (["env=brekout"], "brekout"),
    ],
)
def test_composition_rejects_bad_keys_types_and_options(override, message):
    with pytest.raises(ConfigCompositionException, match=message):
        compose_config(override)


@pytest.mark.parametrize(
    "override, message",
    [
        (["memory.size=-1"], "memory.size=-1 is out of range"),
        (["algorithm.discount=1.5"], r"algorithm.discount=1.5 is out of range; it must be in \[0, 1\]"),
        (["network.name=resnet"], "network.name='resnet' is not allowed; choose one of hvass, nature, mlp"),
        (["mode=play"], "mode='play' is not allowed"),
        (["env.num_envs=4", "memory.size=6"], "memory.size=6 is too small for 4 games"),
        (["env=cartpole"], "use network=mlp"),
        (["network.conv_kernels=[3,3]"], "same length"),
        (["schedule.max_epochs.start=0.5"], "min_epochs"),
        (["network.padding=FULL"], "network.padding='FULL' is not allowed; choose one of null, SAME, VALID"),
        (["network.kernel_init=orthogonal"], "choose one of truncated_normal, xavier_uniform"),
        (["schedule.epsilon.begin=-5"], "schedule.epsilon.begin=-5.0 is out of range; it must be >= 0"),
        (["memory.storage=frames"], "memory.storage=frames needs env.encoding=frame_stack and algorithm dqn or "
                                    "double_dqn"),
        (["memory.storage=frames", "algorithm=sweep_dqn", "env.encoding=frame_stack"], "needs env.encoding"),
        (["memory.storage=frames", "algorithm=dqn", "env.encoding=frame_stack", "env.num_envs=4", "memory.size=20"],
         "memory.size=20 holds 5 rows of 4 games; memory.storage=frames needs more than"),
        (["memory.storage=bytes"], "memory.storage='bytes' is not allowed; choose one of states, frames"),
        (["checkpoint.memory=true"], "checkpoint.memory=true saves a circular memory .* algorithm=hvass empties"),
    ],
)
def test_validation_names_the_key_and_what_is_allowed(override, message):
    cfg = compose_config(override)
    with pytest.raises(ConfigError, match=message) as info:
        validate(cfg)
    assert "\n" not in str(info.value)


def test_derived_values_are_computed_not_written_back():
    cfg = compose_config(["env.num_envs=8", "memory.size=200000"])
    assert num_envs(cfg.env) == 8
    assert memory_rows(cfg.memory, 8) == 25_000
    assert cfg.env.num_envs == 8  # unchanged
    auto = compose_config()
    assert auto.env.num_envs is None and 4 <= num_envs(auto.env) <= 16


def test_run_directory_is_stable_per_game_and_name(tmp_path):
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    def run_dir(*overrides):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", return_hydra_config=True,
                          overrides=[f"paths.root={tmp_path}", *overrides])
        return cfg.hydra.run.dir

    assert run_dir("env=pong", "name=try1") == f"{tmp_path}/runs/pong/try1"
    assert run_dir("env=pong", "name=try1", "seed=5") == run_dir("env=pong", "name=try1")  # resumes
    assert run_dir("env=pong", "name=try2") == f"{tmp_path}/runs/pong/try2"
    assert run_dir("env=atari", "env.game=ms_pacman") == f"{tmp_path}/runs/ms_pacman/default"


def test_the_dqn_group_holds_the_papers_settings_for_a_batch_mean_loss():
    cfg = compose_config(["algorithm=dqn"])
    s = cfg.schedule
    assert (cfg.algorithm.discount, cfg.memory.batch_size) == (0.99, 32)
    assert (s.learning_rate.start, s.learning_rate.end, cfg.optimizer.decay) == (2.5e-4, 2.5e-4, 0.95)
    assert cfg.optimizer.centered and cfg.optimizer.initial_scale == 0.0
    # DeepMind added 0.01 to the mean square of a gradient summed over the batch; the
    # loss here is the batch's mean, so the gradient is batch_size times smaller
    assert cfg.optimizer.eps == pytest.approx(0.01 / cfg.memory.batch_size ** 2, rel=0.03)


def test_the_registry_the_schemas_and_the_yaml_files_name_the_same_algorithms():
    from dqn_jax import algorithms
    from dqn_jax.config import ALGORITHM_SCHEMAS
    from tests.conftest import group_options

    assert set(algorithms.ALGORITHMS) == set(ALGORITHM_SCHEMAS) == set(group_options("algorithm"))
    for name, schema in ALGORITHM_SCHEMAS.items():
        cfg = compose_config([f"algorithm={name}"])
        assert isinstance(cfg.algorithm, schema) and cfg.algorithm.name == name

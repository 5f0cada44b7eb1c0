"""The experiment/ recipes: each holds the settings that make it what it is, and the ones
that launch something of their own (a sweep, another game) run end to end.

The settings are checked in-process (Hydra's compose API): deleting a recipe's key
line, or a default that a recipe leans on changing under it, turns the table red. The
learning recipes (``cartpole``, ``cartpole_dqn``, ``cartpole_sweep_dqn``) run in test_learning.py, and
``breakout_cpu_check`` in ``make test-slow``.
"""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import OmegaConf

from dqn_jax.config import register_configs, validate
from tests.conftest import (
    CONF,
    TINY,
    checkpoint_steps,
    compose_config,
    group_options,
    run_app,
    tail,
)

SMALL_CNN = {"network.name": "nature", "network.conv_features": [16, 32, 32], "network.dense": [256]}
CARTPOLE = {
    "env.kind": "gymnasium", "env.gym_id": "CartPole-v1", "env.num_envs": 16, "network.name": "mlp",
    "network.dense": [256, 256], "steps": 300000, "seed": 0, "test_episodes_after_training": 20,
}
# What makes each recipe what it is (its YAML, and the tutorial's defaults it keeps).
RECIPES = {
    "breakout_tutorial": {
        "env.game": "breakout", "network.name": "hvass", "network.conv_features": [16, 32, 64],
        "network.dense": [1024] * 4, "memory.size": 200000, "algorithm.discount": 0.97,
        "memory.batch_size": 128, "schedule.epsilon.start": 1.0, "schedule.epsilon.end": 0.1,
        "schedule.learning_rate.start": 1e-3, "schedule.learning_rate.end": 1e-5,
        "schedule.loss_limit.start": 0.1, "schedule.max_epochs.end": 10.0, "algorithm.name": "hvass",
        "name": "tutorial",
    },
    "breakout_cpu_check": {
        "env.game": "breakout", **SMALL_CNN, "env.num_envs": 8, "memory.size": 20000, "steps": 300000,
        "seed": 0, "test_episodes_after_training": 30, "schedule.epsilon.span": 150000,
        "schedule.max_epochs.start": 5.0, "name": "cpu_check",
    },
    "cartpole": {
        **CARTPOLE, "algorithm.name": "hvass", "memory.size": 10000, "algorithm.error_threshold": 3.0, "algorithm.discount": 0.99,
        "schedule.epsilon.end": 0.02, "schedule.learning_rate.start": 1e-3, "schedule.max_epochs.start": 10.0, "name": "learns",
    },
    "cartpole_dqn": {
        **CARTPOLE, "algorithm.name": "dqn", "memory.size": 50000, "memory.batch_size": 128,
        "algorithm.warmup": 5000, "algorithm.target_copy_states": 400, "algorithm.huber_delta": 10.0,
        "schedule.learning_rate.start": 2.5e-4, "schedule.learning_rate.end": 1e-6,
        "optimizer.eps": 1e-5, "optimizer.centered": True, "algorithm.discount": 0.99, "schedule.epsilon.end": 0.02,
        "schedule.epsilon.span": 50000, "name": "learns-dqn",
    },
    "cartpole_sweep_dqn": {
        **CARTPOLE, "algorithm.name": "sweep_dqn", "memory.size": 50000, "memory.batch_size": 128,
        "algorithm.warmup": 5000, "algorithm.refresh_states": 400, "algorithm.window": 10000, "algorithm.lam": 0.5,
        "algorithm.huber_delta": 10.0, "algorithm.discount": 0.99, "optimizer.name": "adam",
        "schedule.learning_rate.start": 2.5e-4, "schedule.learning_rate.end": 1e-6, "schedule.epsilon.end": 0.02,
        "schedule.epsilon.span": 50000, "name": "learns-sweep_dqn",
    },
    "cartpole_games": {**CARTPOLE, "algorithm.name": "hvass", "name": "default"},
    "breakout_dopamine_dqn": {
        "env.game": "breakout", "network.name": "nature", "network.conv_features": [32, 64, 64],
        "network.dense": [512], "env.encoding": "frame_stack", "env.stack_size": 4, "env.height": 84,
        "env.width": 84, "env.lives_are_terminals": False, "env.repeat_action_probability": 0.25,
        "algorithm.name": "dqn", "algorithm.warmup": 20000, "algorithm.train_every": 4,
        "algorithm.target_copy_states": 8000, "algorithm.huber_delta": None, "algorithm.discount": 0.99,
        "memory.batch_size": 32, "schedule.epsilon.end": 0.01, "schedule.epsilon.span": 250000,
        "schedule.epsilon.begin": 20000, "network.padding": "SAME", "network.kernel_init": "xavier_uniform",
        "memory.size": 1000000, "memory.storage": "frames", "checkpoint.memory": True,
        "schedule.learning_rate.start": 6.25e-5, "schedule.learning_rate.end": 6.25e-5,
        "optimizer.name": "adam", "optimizer.eps": 1.5e-4, "steps": 1200000, "test_episodes_after_training": 30,
    },
    "compare_algorithms": {
        "env.game": "breakout", **SMALL_CNN, "env.num_envs": 8, "memory.size": 100000, "steps": 1200000,
        "seed": 0, "test_episodes_after_training": 30, "schedule.epsilon.span": 600000,
        "hydra.mode": RunMode.MULTIRUN, "hydra.sweeper.params.algorithm": "hvass,dqn,double_dqn",
        "hydra.sweep.subdir": "${algorithm.name}", "name": "compare",
    },
    "seed_sweep": {"hydra.mode": RunMode.MULTIRUN, "hydra.sweeper.params.seed": "0,1,2", "name": "seeds",
                   "env.game": "breakout"},
    "spaceinvaders": {"env.game": "space_invaders", "network.name": "hvass", "name": "tutorial"},
}


def test_every_recipe_is_in_the_table():
    assert sorted(RECIPES) == group_options("experiment")


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_each_recipe_holds_its_settings(recipe):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={recipe}"], return_hydra_config=True)
    for key, expected in RECIPES[recipe].items():
        node = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        if key.startswith("hydra.sweep.subdir"):  # kept as written: Hydra resolves it per job
            node = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
        value = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
        assert value == expected, f"{recipe}: {key} is {value!r}, not {expected!r}"
    validate(compose_config([f"experiment={recipe}"]))  # as written, it passes the checks a run makes


# A sweep of its own (3 algorithms; 3 seeds) and another game: these launch something the
# other tests do not. Tiny sizes, no test episodes (an untrained Breakout agent that never
# presses FIRE plays each one to the frame limit).
@pytest.mark.parametrize("recipe", ["compare_algorithms", "seed_sweep", "spaceinvaders"])
def test_recipes_that_launch_their_own_jobs_run(tmp_path, recipe):
    overrides = [f"experiment={recipe}", *TINY, "steps=120", "logger=none", "test_episodes_after_training=0"]
    if recipe == "seed_sweep":
        overrides.append("hydra.sweeper.params.seed='0,1'")
    result = run_app(overrides, cwd=tmp_path)
    assert result.returncode == 0, tail(result)
    jobs = sorted(p.parent.parent.name for p in tmp_path.rglob("checkpoints/*") if p.name.isdigit())
    expected = {"compare_algorithms": ["double_dqn", "dqn", "hvass"], "seed_sweep": ["0", "1"],
                "spaceinvaders": ["tutorial"]}[recipe]
    assert jobs == expected, jobs
    for job in tmp_path.rglob("checkpoints"):
        assert checkpoint_steps(job)[-1] >= 120

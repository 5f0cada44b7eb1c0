"""Shared helpers: compose configs with Hydra's API, run the app in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dqn_jax.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# Small enough for a 2-core CPU: conf/debug/tiny.yaml (a tiny network, a tiny memory, 2 games).
TINY = ["+debug=tiny"]


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_config(overrides=(), tmp_path: Path | None = None, to_object: bool = True):
    register_configs()
    extra = [f"paths.root={tmp_path}"] if tmp_path is not None else []
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*extra, *overrides])
    return OmegaConf.to_object(cfg) if to_object else cfg


def _app_command(args, cwd: Path, env_extra=None) -> tuple[list[str], dict]:
    # PYTHONPATH: the subprocess runs this checkout's code, whatever the venv points at.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path,
           **(env_extra or {})}
    return [sys.executable, "-m", "dqn_jax", f"paths.root={cwd}", *args], env


def run_app(args, cwd: Path, timeout: float = 600, env_extra=None) -> subprocess.CompletedProcess:
    """``python -m dqn_jax ARGS`` in a subprocess, everything written under ``cwd``."""
    command, env = _app_command(args, cwd, env_extra)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def start_app(args, cwd: Path) -> subprocess.Popen:
    """``python -m dqn_jax ARGS`` started in the background; its output goes to
    ``cwd/stdout.txt`` and ``cwd/stderr.txt`` (a pipe nobody reads would fill and stall it)."""
    command, env = _app_command(args, cwd)
    with open(cwd / "stdout.txt", "w") as out, open(cwd / "stderr.txt", "w") as err:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err)


@pytest.fixture
def tiny():
    return list(TINY)

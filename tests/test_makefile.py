"""The Makefile's device choice: the CUDA build of JAX where an NVIDIA GPU answers.

Runs ``make -n install`` (print the commands, run none) in a copy of the Makefile with a
stand-in ``nvidia-smi`` first on PATH, so nothing is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def install_commands(tmp_path: Path, nvidia_smi_status: int | None, *args: str) -> str:
    """The commands ``make -n install`` would run; nvidia-smi exits with the given status
    (None: a PATH on which there is no nvidia-smi at all)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    if nvidia_smi_status is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3'\nexit {nvidia_smi_status}\n")
        smi.chmod(0o755)
    for tool in ("sh", "cmp", "echo", "mkdir", "test", "touch"):  # what the recipes may call
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    env = {**os.environ, "PATH": str(bin_dir)}
    env.pop("GPU", None)
    make = shutil.which("make")
    result = subprocess.run([make, "-n", "install", *args], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / ".venv" / "bin").exists()  # -n: nothing was run
    return result.stdout


def pip_install_line(commands: str) -> str:
    (line,) = [c for c in commands.splitlines() if "pip install" in c and " -e " in c]
    return line


def test_working_nvidia_smi_selects_the_cuda_extra(tmp_path):
    assert '-e ".[dev,sweeps,cuda]"' in pip_install_line(install_commands(tmp_path, 0))


@pytest.mark.parametrize("status", [None, 9])
def test_no_gpu_or_a_failing_nvidia_smi_changes_nothing(tmp_path, status):
    assert '-e ".[dev,sweeps]"' in pip_install_line(install_commands(tmp_path, status))


def test_gpu_variable_overrides_the_detection(tmp_path):
    assert '".[dev,sweeps,cuda]"' in pip_install_line(install_commands(tmp_path, None, "GPU=1"))
    assert '".[dev,sweeps]"' in pip_install_line(install_commands(tmp_path, 0, "GPU=0"))


def test_print_extras_and_the_cuda_extra_in_pyproject(tmp_path):
    install_commands(tmp_path, 0)
    out = subprocess.run([shutil.which("make"), "-s", "print-extras"], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PATH": str(tmp_path / "bin")}, timeout=60)
    assert out.stdout.strip() == "dev,sweeps,cuda"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.replace(" ", "").startswith("jax[cuda12]") for req in extras["cuda"])

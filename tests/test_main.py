"""The command line: bad input gives one clear line, exit status 2, and writes nothing.

Every case runs in-process (``dqn_jax.__main__.main`` with its argv: Hydra's composition
and the checks that follow it, no JAX), and a few also as real commands: ``python -m
dqn_jax`` and the ``dqn-jax`` console script.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dqn_jax.__main__ import main
from tests.conftest import app_env, run_app

BAD_INPUT = [
    (["memory.sise=5"], ["memory.sise", "allowed keys", "size"]),
    (["memory.size=abc"], ["memory.size=abc", "Integer"]),
    (["env=brekout"], ["env/brekout", "breakout", "spaceinvaders"]),
    (["algorithm.discount=2"], ["algorithm.discount=2.0 is out of range", "[0, 1]"]),
    (["network.name=resnet"], ["network.name='resnet'", "hvass, nature, mlp"]),
    (["env.game=brekout"], ["env.game='brekout'", "did you mean 'breakout'"]),
    (["mode=test", "name=never-trained"], ["no checkpoint to test"]),
    (["oops"], ["oops"]),
    (["memory.sweep=scan"], ["memory.sweep was renamed; use algorithm.target_method"]),
    (["schedule.rmsprop_eps=0.1"], ["schedule.rmsprop_eps was renamed; use optimizer.eps"]),
    (["algorithm.warmup=5"], ["Key 'warmup' not in 'HvassConfig'", "algorithm.warmup is a setting of algorithm=dqn or double_dqn"]),
]
IDS = [" ".join(a) for a, _ in BAD_INPUT]


def run_in_process(args, root: Path, capsys, monkeypatch) -> tuple[int, str, str]:
    # Hydra's logging set-up (logging.config.dictConfig) would close pytest's own log
    # handlers in this process: none here (the real commands keep it).
    quiet = ["hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", ["dqn_jax", f"paths.root={root}", *args, *quiet])
    monkeypatch.chdir(root)
    with pytest.raises(SystemExit) as stop:
        main()
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def assert_one_line_and_nothing_written(status: int, stderr: str, expected, root: Path) -> None:
    assert status == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dqn_jax: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    written = [p for p in root.rglob("*") if p.is_file()]  # no run directory with files, no store
    assert written == [], written


@pytest.mark.parametrize("args, expected", BAD_INPUT, ids=IDS)
def test_bad_input_gets_one_line_and_exit_2(tmp_path, capsys, monkeypatch, args, expected):
    status, _, err = run_in_process([*args, "logger=none"], tmp_path, capsys, monkeypatch)
    assert_one_line_and_nothing_written(status, err, expected, tmp_path)


@pytest.mark.parametrize("args, expected", [BAD_INPUT[0], BAD_INPUT[3], BAD_INPUT[6]], ids=[IDS[0], IDS[3], IDS[6]])
def test_bad_input_to_the_real_command(tmp_path, args, expected):
    result = run_app([*args, "logger=none"], cwd=tmp_path, timeout=300)
    assert_one_line_and_nothing_written(result.returncode, result.stderr, expected, tmp_path)


def test_the_console_script_finds_its_config(tmp_path):
    """``dqn-jax`` (pyproject's script) is the same command, from any directory."""
    script = Path(sys.executable).with_name("dqn-jax")
    if not script.exists():
        pytest.skip("dqn_jax is not installed in this environment (make install)")
    result = subprocess.run([str(script), f"paths.root={tmp_path}", "algorithm.discount=2", "logger=none"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=app_env())
    assert_one_line_and_nothing_written(result.returncode, result.stderr, BAD_INPUT[3][1], tmp_path)


def test_help_still_prints(tmp_path):
    result = run_app(["--help"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0
    assert "env: " in result.stdout and "breakout" in result.stdout

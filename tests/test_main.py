"""The command line: bad input gives one clear line, exit status 2, and writes nothing."""

from __future__ import annotations

import pytest

from tests.conftest import run_app

BAD_INPUT = [
    (["memory.sise=5"], ["memory.sise", "allowed keys", "size"]),
    (["memory.size=abc"], ["memory.size=abc", "Integer"]),
    (["env=brekout"], ["env/brekout", "breakout", "spaceinvaders"]),
    (["memory.discount=2"], ["memory.discount=2.0 is out of range", "[0, 1]"]),
    (["network.name=resnet"], ["network.name='resnet'", "hvass, nature, mlp"]),
    (["env.game=brekout"], ["env.game='brekout'", "did you mean 'breakout'"]),
    (["mode=test", "name=never-trained"], ["no checkpoint to test"]),
    (["oops"], ["oops"]),
    (["memory.sweep=scan"], ["memory.sweep was renamed; use memory.target_method"]),
]


@pytest.mark.parametrize("args, expected", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_gets_one_line_and_exit_2(tmp_path, args, expected):
    result = run_app([*args, "logger=none"], cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dqn_jax: error: ")
    assert "Traceback" not in result.stderr
    for fragment in expected:
        assert fragment in lines[0], lines[0]
    # nothing written: no run directory with files, no MLflow store
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written == [], written


def test_help_still_prints(tmp_path):
    result = run_app(["--help"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0
    assert "env: " in result.stdout and "breakout" in result.stdout

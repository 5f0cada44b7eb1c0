"""`make gpu-check` in its tiny form, on the CPU: every part runs and both docs get a section."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_gpu_check_writes_dated_sections_into_copies_of_the_docs(tmp_path):
    docs, out = tmp_path / "docs", tmp_path / "out"
    shutil.copytree(ROOT / "docs", docs)
    before = {name: (docs / name).read_text() for name in ("benchmarks.md", "results.md")}
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "experiments" / "gpu_check.py"), "--tiny", "--minutes", "0.25",
                        "--docs-dir", str(docs), "--out", str(out)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    bench_text, results_text = (docs / "benchmarks.md").read_text(), (docs / "results.md").read_text()
    assert bench_text.startswith(before["benchmarks.md"].rstrip("\n"))  # appended, nothing lost
    assert results_text.startswith(before["results.md"].rstrip("\n"))
    date = r"\d{4}-\d\d-\d\d"
    section = bench_text[len(before["benchmarks.md"].rstrip("\n")):]
    assert re.search(rf"^## tiny smoke run, {date}, \S+", section, re.MULTILINE)
    assert "- machine: " in section and "JAX on cpu" in section
    for figure in ("acting, minimal network", "backward sweep (associative)", "optimise (host loop), tiny float32",
                   "optimise (host loop), tiny bfloat16", "error-split sampler per batch", "whole run, tiny"):
        assert re.search(rf"^\| \w \| {re.escape(figure)}.*\| (PASS|FAIL|info) \|$", section, re.MULTILINE), figure
    run = re.search(r"\| training \| [\d.]+ min, ([\d,]+) states, (\d+) episodes, (\d+) learning cycles \|",
                    results_text)
    assert run and int(run.group(1).replace(",", "")) > 0 and int(run.group(3)) >= 1
    assert re.search(rf"^## Breakout, 0.25 minutes \(tiny smoke run\), {date}", results_text, re.MULTILINE)
    assert re.search(r"\| test \(.*\) \| (mean [\d.-]+ .* over \d+ episodes|no test episode finished) \|",
                     results_text)
    assert (out / "benchmarks.md").read_text() == bench_text and (out / "results.md").read_text() == results_text
    assert (ROOT / "docs" / "benchmarks.md").read_text() != bench_text  # the real docs untouched


@pytest.mark.slow
def test_the_gpu_tests_pass_with_the_cpu_standing_in_for_the_gpu():
    """Keeps tests/test_gpu.py honest on machines without a GPU: each comparison, with the
    CPU on both sides (bf16 excepted: XLA:CPU compiles bf16 products as f32)."""
    import jax

    from tests import test_gpu as T

    cpu = jax.devices("cpu")[0]
    T.test_device_optimise_loop_on_the_gpu_matches_the_host_loop_on_the_cpu(cpu, cpu)
    T.test_associative_sweep_on_the_gpu_matches_the_reference(cpu, 40)
    T.test_sampler_on_the_gpu_draws_the_cpus_batches(cpu, cpu)
    T.test_bfloat16_runs_in_bfloat16_on_the_gpu(cpu, "float32", "f32")
    with pytest.raises(AssertionError):
        T.test_bfloat16_runs_in_bfloat16_on_the_gpu(cpu, "bfloat16", "bf16")
    T.test_hvass_update_on_the_gpu_matches_the_cpu(cpu, cpu)

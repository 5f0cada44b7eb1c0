"""dqn_jax.sweeps.compare on a real finished sweep (tiny CartPole jobs) and on made-up children."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dqn_jax.sweeps.compare import Child, group_children, main, score_table, table_markdown
from tests.conftest import (
    CART,
    CARTPOLE,
    app_env,
    client_for,
    run_app,
    run_module,
    sweep_runs,
    tail,
)

CART = [*CART, "steps=200"]


def compare_cli(*args, cwd: Path, script: str | None = None) -> subprocess.CompletedProcess:
    if script is None:
        return run_module("dqn_jax.sweeps.compare", args, cwd=cwd)
    return subprocess.run([script, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=app_env())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished 2 x 2 sweep on local_parallel: two learning rates, two seeds each (the
    launch itself is checked by the first test; the others compare it)."""
    root = tmp_path_factory.mktemp("sweep")
    result = run_app([*CART, "hydra.mode=MULTIRUN", "hydra/launcher=local_parallel",
                      "schedule.learning_rate.start=1e-3,3e-4", "seed=0,1"], cwd=root)
    assert result.returncode == 0, tail(result)
    client = client_for(root)
    (parent,) = client.search_runs([client.get_experiment_by_name(CARTPOLE).experiment_id],
                                   filter_string="tags.`dqn_jax.sweep` = 'true'")
    return root, client, parent


def test_grid_on_local_parallel_gives_one_parent_and_a_tagged_child_per_job(sweep, tmp_path):
    """Read before the tests below log their own comparisons to the parent."""
    root, client, _ = sweep
    parent, children = sweep_runs(client)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dqn_jax.launcher"].endswith("JoblibLauncher")
    assert parent.data.tags["dqn_jax.jobs_total"] == "4" and parent.data.tags["dqn_jax.jobs_failed"] == "0"
    sweep_id = parent.data.tags["dqn_jax.sweep_id"]
    assert (root / "runs" / "multirun" / sweep_id).is_dir()
    assert "schedule.learning_rate.start=1e-3,3e-4" in json.loads(parent.data.params["sweep.overrides"])
    available = len(os.sched_getaffinity(0))
    grid = [("0.001", "0"), ("0.001", "1"), ("0.0003", "0"), ("0.0003", "1")]
    assert [r.data.tags["dqn_jax.job_num"] for r in children] == ["0", "1", "2", "3"]
    for run, (rate, seed) in zip(children, grid, strict=True):
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED"
        assert params["schedule.learning_rate.start"] == rate and params["seed"] == seed
        assert tags["dqn_jax.overrides"] == f"schedule.learning_rate.start={rate} seed={seed}"
        assert tags["dqn_jax.sweep_id"] == sweep_id
        assert run.data.metrics["train/states"] >= 200 and "episode/mean30" in run.data.metrics
        # each loky worker pinned to its half of the cores, XLA told to share the GPU
        assert 1 <= len(tags["dqn_jax.cpus"].split(",")) <= max(1, -(-available // 2))
        assert tags["dqn_jax.xla_preallocate"] == "false"
        assert tags["dqn_jax.xla_mem_fraction"] == "0.450"
    if available >= 2:  # two workers, two slots
        assert len({r.data.tags["dqn_jax.cpus"] for r in children}) == 2
    # the parent holds the comparison: a configuration per learning rate, its two seeds
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert logged == {"compare/rewards.png", "compare/scores.csv", "compare/scores.md"}
    table = (Path(client.download_artifacts(parent.info.run_id, "compare/scores.csv", str(tmp_path)))).read_text()
    rows = {row["configuration"]: row for row in csv.DictReader(io.StringIO(table))}
    assert set(rows) == {"schedule.learning_rate.start=0.001", "schedule.learning_rate.start=0.0003"}
    assert all(row["runs"] == "2" and row["seeds"] == "0 1" for row in rows.values())


def test_compare_writes_the_plot_and_table_and_logs_them_to_the_parent(sweep, tmp_path):
    root, client, parent = sweep
    out = tmp_path / "out"
    done = compare_cli(parent.info.run_id, "--root", str(root), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    png = (out / "rewards.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["configuration"] for r in rows] == ["schedule.learning_rate.start=0.0003",
                                                  "schedule.learning_rate.start=0.001"]
    for row in rows:  # the two seeds of a configuration are one row, averaged
        assert row["runs"] == "2" and row["finished"] == "2" and row["seeds"] == "0 1"
        assert float(row["final episode/mean30 (mean)"]) > 0
        assert float(row["states (mean)"]) >= 200
    markdown = (out / "scores.md").read_text()
    assert markdown.startswith("| configuration |") and markdown.count("\n") == 4
    assert "| schedule.learning_rate.start=0.001 | 2 | 2 | 0 1 |" in done.stdout
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert logged == {"compare/rewards.png", "compare/scores.csv", "compare/scores.md"}


def test_compare_finds_a_sweep_by_its_id(sweep, tmp_path):
    root, _, parent = sweep
    script = Path(sys.executable).with_name("dqn-jax-compare")  # the console script
    done = compare_cli("--sweep-id", parent.data.tags["dqn_jax.sweep_id"], "--root", str(root),
                       "--no-log", cwd=tmp_path, script=str(script) if script.exists() else None)
    assert done.returncode == 0, done.stderr[-3000:]
    written = tmp_path / f"compare-{parent.data.tags['dqn_jax.sweep_id']}"
    assert {p.name for p in written.iterdir()} == {"rewards.png", "scores.csv", "scores.md"}


def run_main(args, capsys) -> tuple[int, str]:
    """``main(args)`` in this process (quicker than a subprocess): exit status, stderr."""
    try:
        status = main(args)
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["0123456789abcdef"], "no run with id '0123456789abcdef'"),
    (["--sweep-id", "1999-01-01_00-00-00"], "no sweep with id '1999-01-01_00-00-00'"),
])
def test_bad_input_is_one_line_and_exit_2(sweep, capsys, args, message):
    root, _, _ = sweep
    status, err = run_main([*args, "--root", str(root)], capsys)
    assert status == 2
    assert err.strip().splitlines() == [f"dqn-jax-compare: error: {message} in this store"]


def test_a_run_without_children_or_a_missing_store_is_exit_2(sweep, tmp_path, capsys):
    root, client, parent = sweep
    child = client.search_runs([parent.info.experiment_id],
                               filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")[0]
    status, err = run_main([child.info.run_id, "--root", str(root)], capsys)
    assert status == 2 and "has no child runs" in err
    status, err = run_main(["abc", "--root", str(tmp_path / "nowhere")], capsys)
    assert status == 2 and "there is no MLflow store" in err
    assert not (tmp_path / "nowhere").exists()
    status, err = run_main([], capsys)  # neither a run id nor --sweep-id
    assert status == 2 and "give the sweep's parent run id or --sweep-id" in err


def _child(overrides, seed, final, status="FINISHED"):
    steps = np.array([100.0, 200.0, 300.0])
    curve = (steps, np.array([0.0, final / 2, final])) if final is not None else (np.zeros(0), np.zeros(0))
    return Child(run_id=f"r{overrides}{seed}", status=status, overrides=[*overrides, f"seed={seed}"],
                 seed=str(seed), metrics={"train/states": 300.0}, curve=curve)


def test_children_that_differ_only_by_seed_are_averaged():
    children = [_child(["lr=1"], 0, 2.0), _child(["lr=1"], 1, 4.0), _child(["lr=2"], 0, 10.0),
                _child(["lr=2"], 1, None, status="FAILED")]
    groups = group_children(children)
    assert [g.label for g in groups] == ["lr=1", "lr=2"]
    rows = score_table(groups)
    assert rows[0]["final episode/mean30 (mean)"] == 3.0 and rows[0]["final episode/mean30 (std)"] == 1.0
    assert rows[1]["final episode/mean30 (mean)"] == 10.0  # the failed seed has no score
    assert rows[1]["finished"] == 1 and rows[1]["runs"] == 2
    assert "| lr=1 | 2 | 2 | 0 1 | 3 | 1 |" in table_markdown(rows)
    seeds_only = group_children([_child([], 0, 1.0), _child([], 1, 1.0)])
    assert [g.label for g in seeds_only] == ["(defaults)"]


def test_the_children_are_named_by_what_they_vary(sweep):
    root, client, parent = sweep
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == [
        f"schedule.learning_rate.start={rate} seed={seed}" for rate in ("0.0003", "0.001") for seed in (0, 1)]


KILLED_SWEEP = """
import sys, time
from omegaconf import OmegaConf
from dqn_jax import config, tracking
cfg = OmegaConf.structured(config.Config)
cfg.paths.root = sys.argv[1]
parent = tracking.start_tracker(cfg, sys.argv[1] + "/sweep", run_name="sweep",
                                tags={"dqn_jax.sweep": "true", "dqn_jax.sweep_id": "killed"})
child = tracking.start_tracker(cfg, sys.argv[1] + "/sweep/0", run_name="seed=0",
                               parent_run_id=parent.run_id, tags={"dqn_jax.overrides": "seed=0"})
child.log_metrics({"episode/mean30": 3.0}, step=10)
child.flush()
print(parent.run_id, flush=True)
time.sleep(600)
"""


def test_compare_closes_a_sweep_whose_launcher_was_killed(tmp_path):
    """A process holding a sweep's parent and child runs is killed with SIGKILL: compare
    closes both KILLED (tag dqn_jax.closed_reason), then compares as usual."""
    process = subprocess.Popen([sys.executable, "-c", KILLED_SWEEP, str(tmp_path)], stdout=subprocess.PIPE,
                               text=True, env=app_env())
    try:
        parent_id = process.stdout.readline().strip()
        client = client_for(tmp_path)
        done = compare_cli("--sweep-id", "killed", "--root", str(tmp_path), "--out", str(tmp_path / "out"),
                           cwd=tmp_path)
        assert done.returncode == 0 and client.get_run(parent_id).info.status == "RUNNING"  # alive: left
    finally:
        process.kill()
        process.wait()
    done = compare_cli("--sweep-id", "killed", "--root", str(tmp_path), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"closed KILLED: parent run {parent_id} and 1 child run" in done.stderr
    parent = client.get_run(parent_id)
    (child,) = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    for run in (parent, child):
        assert run.info.status == "KILLED"
        assert "closed KILLED by dqn-jax-compare" in run.data.tags["dqn_jax.closed_reason"]
    assert "| (defaults) | 1 | 0 |" in done.stdout  # then compared: one run (seed=0), none finished

"""Stopped from outside: SIGTERM, SIGHUP and Ctrl-C end a run saved, KILLED, resumable.

Real training subprocesses on tiny settings, real Orbax checkpoints, a real MLflow store;
signals are sent at chosen moments (while playing, optimising, saving) found from what
the run writes.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from dqn_jax.runner.interrupts import STOP_TAG
from tests.conftest import (
    CART,
    TINY,
    app_command,
    app_env,
    client_for,
    read_csv,
    restore_newest,
    run_app,
    start_app,
    wait_for,
)
from tests.conftest import checkpoint_steps as steps_of


def finish(process: subprocess.Popen, cwd: Path, timeout: float = 120) -> tuple[int, str]:
    """(exit status, stderr) of a process started with ``start_app``."""
    process.wait(timeout=timeout)
    return process.returncode, (cwd / "stderr.txt").read_text()


def restore(root: Path, checkpoints: Path, overrides=()) -> dict:
    """The newest checkpoint's counters (it must restore whole)."""
    return restore_newest(root, checkpoints, overrides)[1]


def the_run(root: Path, run_dir: Path):
    return client_for(root).get_run((run_dir / "mlflow_run_id").read_text().strip())


def assert_one_line(stderr: str, start: str) -> None:
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith(start), stderr[-3000:]


# ---------------------------------------------------------------------------- single runs

LONG_OPTIMISE = ["algorithm.min_epochs=400", "schedule.max_epochs.start=400", "schedule.max_epochs.end=400"]


def _stop_at(tmp_path: Path, moment: str, signum: int, extra=()) -> tuple[int, str]:
    """Train (or resume) run ``stop`` until ``moment``, send ``signum``; (status, stderr)."""
    run_dir = tmp_path / "runs" / "breakout" / "stop"
    checkpoints, q_rows = run_dir / "checkpoints", run_dir / "q_values.csv"
    known, swept = steps_of(checkpoints), len(read_csv(q_rows))
    process = start_app([*TINY, "steps=100000", "name=stop", *extra], tmp_path)
    if moment == "playing":  # a cycle saved: the next is playing
        wait_for(lambda: steps_of(checkpoints) != known, "checkpoint", process=process, every=0.005)
        time.sleep(0.3)
    elif moment == "optimising":  # a sweep logged, its 400 epochs begun
        wait_for(lambda: len(read_csv(q_rows)) > swept, "sweep", process=process, every=0.005)
        time.sleep(0.5)
    else:  # a save begun (a temporary directory beside the checkpoints)
        wait_for(lambda: checkpoints.is_dir() and any("tmp" in p.name for p in checkpoints.iterdir()),
                 "save", process=process, every=0.005)
    process.send_signal(signum)
    return finish(process, tmp_path)


def test_sigterm_or_sighup_at_any_moment_saves_ends_killed_and_the_relaunch_resumes(tmp_path):
    """While playing (SIGHUP), optimising and saving (SIGTERM), each launch resuming the one
    before: status 128 + the signal, one line, a complete checkpoint of the state at the
    stop, the run KILLED naming the signal, continued by the next launch with exact
    counters and no history twice."""
    run_dir, client = tmp_path / "runs" / "breakout" / "stop", client_for(tmp_path)
    # a memory of 2,000 states: cycles of 1,000 states, seconds of playing between the saves
    status, stderr = _stop_at(tmp_path, "playing", signal.SIGHUP, ["memory.size=2000"])
    assert status == 129
    assert_one_line(stderr, "dqn_jax: stopped by SIGHUP (a training run resumes")
    counters = restore(tmp_path, run_dir / "checkpoints")
    swept = [int(r["states"]) for r in read_csv(run_dir / "q_values.csv")]
    # saved where it stopped, in the middle of a cycle's playing, not at the last cycle's end
    assert counters["cycles"] == len(swept) and counters["states"] > swept[-1]
    run = the_run(tmp_path, run_dir)
    assert run.info.status == "KILLED" and run.data.tags[STOP_TAG] == "SIGHUP"
    assert run.data.metrics["train/states"] == counters["states"]

    status, stderr = _stop_at(tmp_path, "optimising", signal.SIGTERM, ["memory.size=2000", *LONG_OPTIMISE])
    assert status == 143
    assert_one_line(stderr, "dqn_jax: stopped by SIGTERM (a training run resumes")
    assert f"resuming from {run_dir / 'checkpoints'}: {counters['states']} states" in (tmp_path / "stdout.txt").read_text()
    rows = read_csv(run_dir / "q_values.csv")
    counters = restore(tmp_path, run_dir / "checkpoints")
    assert (counters["states"], counters["cycles"]) == (int(rows[-1]["states"]), len(rows))
    run = the_run(tmp_path, run_dir)
    assert run.info.status == "KILLED" and run.data.tags[STOP_TAG] == "SIGTERM"
    epochs = client.get_metric_history(run.info.run_id, "cycle/epochs")
    assert 0 < max(epochs, key=lambda m: m.step).value < 400  # stopped at a batch, not after 400 epochs

    status, stderr = _stop_at(tmp_path, "saving", signal.SIGTERM)
    assert status == 143
    assert_one_line(stderr, "dqn_jax: stopped by SIGTERM")
    saved = steps_of(run_dir / "checkpoints")
    assert not [p for p in (run_dir / "checkpoints").iterdir() if "tmp" in p.name]
    resumed_at, counters = counters["states"], restore(tmp_path, run_dir / "checkpoints")
    assert counters["states"] == saved[-1] > resumed_at  # the save under way was completed, not torn
    killed = the_run(tmp_path, run_dir)
    assert killed.info.run_id == run.info.run_id and killed.info.status == "KILLED"
    assert killed.data.tags["dqn_jax.resumed_at_states"] == str(resumed_at)
    rewards = read_csv(run_dir / "rewards.csv")
    episodes = [int(r["episode"]) for r in rewards]
    assert episodes == list(range(1, len(rewards) + 1)) and len(rewards) == counters["episodes"]
    history = client.get_metric_history(killed.info.run_id, "episode/count")  # none twice, none missing
    assert sorted((m.step, int(m.value)) for m in history) == [(int(r["states"]), int(r["episode"]))
                                                                 for r in rewards]
    cycles = sorted(m.step for m in client.get_metric_history(killed.info.run_id, "cycle/count"))
    assert cycles == [int(r["states"]) for r in read_csv(run_dir / "q_values.csv")]
    assert len(cycles) == counters["cycles"]


def test_a_second_ctrl_c_while_saving_ends_at_once_with_the_checkpoint_intact(tmp_path):
    """Two Ctrl-C while a checkpoint is being written: the save finishes (it is never torn),
    then the run closes at once: KILLED, without the slow parts (the curves, the checkpoint's
    upload), status 130, one line."""
    run_dir = tmp_path / "runs" / "breakout" / "twice"
    checkpoints = run_dir / "checkpoints"
    process = start_app([*TINY, "steps=100000", "name=twice"], tmp_path)
    wait_for(lambda: checkpoints.is_dir() and any("tmp" in p.name for p in checkpoints.iterdir()), "save",
             process=process, every=0.005)
    process.send_signal(signal.SIGINT)
    # The second only once the first was handled: CPython runs a signal's handler once for
    # however many arrive before the main thread gets back to Python code (here, in a save).
    wait_for(lambda: "stopping at the next safe point" in (tmp_path / "stderr.txt").read_text(), "the first stop",
             process=process, every=0.001)
    process.send_signal(signal.SIGINT)
    status, stderr = finish(process, tmp_path)
    assert status == 130
    assert_one_line(stderr, "dqn_jax: interrupted (a training run resumes from its last checkpoint")
    saved = steps_of(checkpoints)
    assert saved and not [p for p in checkpoints.iterdir() if "tmp" in p.name]
    assert restore(tmp_path, checkpoints)["states"] == saved[-1]
    run = the_run(tmp_path, run_dir)
    assert run.info.status == "KILLED" and run.data.tags[STOP_TAG] == "SIGINT"
    artifacts = {a.path for a in client_for(tmp_path).list_artifacts(run.info.run_id)}
    assert "rewards.csv" in artifacts and "checkpoints" not in artifacts  # the upload was skipped


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny Breakout run with a checkpoint (about 10 s)."""
    root = tmp_path_factory.mktemp("trained")
    result = run_app([*TINY, "steps=260", "name=t"], cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_ctrl_c_in_test_mode_ends_with_one_line_and_status_130(trained):
    test_dir = trained / "runs" / "breakout" / "t" / "test"
    process = start_app([*TINY, "mode=test", "name=t", "episodes=1000"], trained)
    wait_for(lambda: (test_dir / "mlflow_run_id").exists(), "test run", process=process, every=0.05)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    status, stderr = finish(process, trained)
    assert status == 130
    assert_one_line(stderr, "dqn_jax: interrupted")
    run = the_run(trained, test_dir)
    assert run.info.status == "KILLED" and run.data.tags[STOP_TAG] == "SIGINT"


def test_sigterm_ends_analyze_cleanly(trained):
    out = trained / "analyze.txt"
    curves = trained / "runs" / "breakout" / "t" / "analysis" / "training-curves.png"
    curves.unlink(missing_ok=True)  # the training run drew it too: wait for analyze's own
    with open(out, "w") as log:
        command = app_command([str(trained / "runs" / "breakout" / "t"), f"tracking_uri=sqlite:///{trained}/mlruns.db",
                               "episodes=5"], trained, module="dqn_jax.analyze")
        process = subprocess.Popen(command, cwd=trained, env=app_env(), stdout=subprocess.DEVNULL, stderr=log)
    wait_for(curves.exists, "first picture", process=process, every=0.05)  # into the analysis
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    stderr = out.read_text()
    assert process.returncode == 143, stderr[-3000:]
    assert_one_line(stderr, "dqn_jax.analyze: stopped by SIGTERM")


# ---------------------------------------------------------------------------- sweeps

EXPERIMENT = "dqn_jax/CartPole-v1"


def parent_and_jobs(root: Path, sweep_dir: Path) -> tuple:
    """(the sweep's parent run, its children by seed) as the store holds them now."""
    client = client_for(root)
    parent = client.get_run((sweep_dir / "mlflow_run_id").read_text().strip())
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, {r.data.params["seed"]: r for r in children}


def make_store(root: Path) -> None:
    """Create the embedded store first: under load, its first migration can outlast the
    launcher's store check (a thread with a timeout), and a second migration then races it."""
    client_for(root).search_experiments()


def job_checkpoints(sweep_dir: Path) -> dict[str, list[int]]:
    return {job.name: steps_of(job / "checkpoints") for job in sorted(sweep_dir.glob("[0-9]*"))}


def _stop_a_sweep(tmp_path: Path, sweep_dir: Path, launcher: list[str], jobs: int) -> tuple[int, str]:
    """Launch a sweep of ``jobs`` seeds, SIGTERM it once every job has a checkpoint."""
    seeds = ",".join(str(s) for s in range(jobs))
    make_store(tmp_path)
    process = start_app([*CART, "steps=10000000", "hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep_dir}",
                         *launcher, f"seed={seeds}"], tmp_path)
    wait_for(lambda: sum(bool(s) for s in job_checkpoints(sweep_dir).values()) == jobs,
             "a checkpoint in every job", process=process)
    process.send_signal(signal.SIGTERM)
    return finish(process, tmp_path, timeout=180)


def _assert_stopped_and_resumable(tmp_path: Path, sweep_dir: Path, jobs: int) -> dict:
    """Every job saved and KILLED by the signal itself; the parent KILLED; {seed: (run id, states)}."""
    parent, children = parent_and_jobs(tmp_path, sweep_dir)
    assert parent.info.status == "KILLED"
    assert sorted(children) == [str(s) for s in range(jobs)]
    saved = {}
    for seed, run in children.items():
        job_dir = Path(run.data.tags["dqn_jax.run_dir"])
        checkpoints = steps_of(job_dir / "checkpoints")
        assert not [p for p in (job_dir / "checkpoints").iterdir() if "tmp" in p.name]  # no torn save
        # stopped by the signal (not closed by the sweep for a job that was killed)
        assert run.info.status == "KILLED" and run.data.tags[STOP_TAG] == "SIGTERM"
        assert "dqn_jax.closed_by_sweep" not in run.data.tags
        assert run.data.metrics["train/states"] == checkpoints[-1]  # saved where it stopped
        job_tag = parent.data.tags.get(f"dqn_jax.jobs.{run.data.tags.get('dqn_jax.job_num')}")
        assert job_tag is None or job_tag.startswith("KILLED: JobStopped")  # (none: the basic launcher's)
        saved[seed] = (run.info.run_id, checkpoints[-1])
    assert not list((sweep_dir / ".running").glob("*"))
    return saved


def _relaunch_resumes_each(tmp_path: Path, sweep_dir: Path, launcher: list[str], saved: dict) -> None:
    again = run_app([*CART, "steps=1", "hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep_dir}", *launcher,
                     f"seed={','.join(saved)}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    parent, children = parent_and_jobs(tmp_path, sweep_dir)
    assert parent.info.status == "FINISHED"
    for seed, (run_id, states) in saved.items():  # the same run, from its checkpoint
        run = children[seed]
        assert run.info.run_id == run_id and run.info.status == "FINISHED"
        assert run.data.tags["dqn_jax.resumed_at_states"] == str(states)


# Both slow (about 30 and 70 s): the suite's budget. In `make test`, tests/test_sweeps.py's Ctrl-C
# sweep test goes through the same path (the launching process sends the signal on to the jobs).
@pytest.mark.slow
@pytest.mark.parametrize("launcher, jobs", [("basic", 1), ("local_parallel", 2)])
def test_sigterm_to_a_sweep_saves_every_running_job_and_the_relaunch_resumes_each(tmp_path, launcher, jobs):
    """SIGTERM to the launching process only (as `timeout` or Kubernetes send it). The basic
    launcher's job runs in that process; for joblib's workers it sends the signal on to the
    jobs and waits for them to save."""
    sweep_dir, launcher = tmp_path / "sweep", [f"hydra/launcher={launcher}"]
    status, stderr = _stop_a_sweep(tmp_path, sweep_dir, launcher, jobs=jobs)
    assert status == 143, stderr[-3000:]
    assert "Traceback" not in stderr and "dqn_jax: stopped by SIGTERM" in stderr
    saved = _assert_stopped_and_resumable(tmp_path, sweep_dir, jobs=jobs)
    _relaunch_resumes_each(tmp_path, sweep_dir, launcher, saved)


@pytest.mark.slow
def test_a_submitit_job_over_its_time_limit_is_requeued_resumes_and_stops_on_sigterm(tmp_path):
    """submitit's local executor, as on Slurm: a time limit of 1 minute sends SIGUSR2 30 s
    into the job; the run saves and closes KILLED, submitit requeues the job, which resumes
    from that checkpoint in the same MLflow run. Then SIGTERM to the sweep stops it saved,
    and a relaunch resumes it again (about 2 minutes)."""
    sweep_dir = tmp_path / "sweep"
    launcher = ["hydra/launcher=submitit_local_cpu", "hydra.launcher.timeout_min=1"]
    make_store(tmp_path)
    process = start_app([*CART, "steps=10000000", "hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep_dir}",
                         *launcher, "seed=0"], tmp_path)
    client, job_dir = client_for(tmp_path), sweep_dir / "0"

    def requeued() -> bool:
        run_file = job_dir / "mlflow_run_id"
        return run_file.exists() and "dqn_jax.resumed_at_states" in client.get_run(
            run_file.read_text().strip()).data.tags

    wait_for(requeued, "a requeued job resuming", process=process, timeout=240, every=0.5)
    run = client.get_run((job_dir / "mlflow_run_id").read_text().strip())
    resumed_at = int(run.data.tags["dqn_jax.resumed_at_states"])
    assert run.data.tags[STOP_TAG] == "SIGUSR2"  # the first attempt was stopped by the time limit
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_0_log.*"))
    assert "SIGUSR2: stopping at the next safe point" in logs and "Requeued job" in logs
    assert f"resuming from {job_dir / 'checkpoints'}: {resumed_at} states" in logs
    time.sleep(2.0)
    process.send_signal(signal.SIGTERM)
    status, stderr = finish(process, tmp_path, timeout=180)
    assert status == 143, stderr[-3000:]
    saved = _assert_stopped_and_resumable(tmp_path, sweep_dir, jobs=1)
    assert saved["0"][0] == run.info.run_id and saved["0"][1] > resumed_at
    _relaunch_resumes_each(tmp_path, sweep_dir, launcher, saved)


@pytest.mark.slow
def test_sigterm_to_a_ray_local_sweep_saves_every_running_job_and_the_relaunch_resumes_each(tmp_path):
    """The jobs run in Ray's worker processes on this machine (starting Ray is most of the
    time: about 2 minutes in all)."""
    sweep_dir = tmp_path / "sweep"
    launcher = ["hydra/launcher=ray_local", "hydra.launcher.ray.init.num_cpus=2", "hydra.launcher.ray.remote.num_cpus=1"]
    status, stderr = _stop_a_sweep(tmp_path, sweep_dir, launcher, jobs=2)
    assert status == 143, stderr[-3000:]
    assert "dqn_jax: stopped by SIGTERM" in stderr
    saved = _assert_stopped_and_resumable(tmp_path, sweep_dir, jobs=2)
    _relaunch_resumes_each(tmp_path, sweep_dir, launcher, saved)

"""`make bench`: every speed and size target of the project, measured in one run.

    .venv/bin/python experiments/bench.py [--quick] [--only acting,sweep,learner,tracking,memory,run]
    make bench ARGS=--quick

Prints one line per figure with its target and PASS / FAIL (or "info" where there is
no target). Ratios are measured side by side in this run, alternating, with medians,
because the machine may be shared; absolute figures are for this machine only.

a. acting pipeline vs raw ale-py (8 games): minimal network >= 85%; nature, hvass: info
b. jitted backward sweep vs a per-state Python loop at 200,000 states: >= 100x
c. learner: optimise samples/s of the hvass network at batch 128 here; the error-split
   sampler's cost per batch at 200,000 states, before and after the per-cycle plan;
   bfloat16 vs float32 updates; the GPU bound
d. MLflow tracking overhead: training states/s with the tracker vs logger off >= 98%, with pairs
   added until its 95% confidence interval is within +-1%
e. replay memory bytes per state within 5% of 16,800; peak RSS of a 200,000-state run
   within 1.3x the memory's size (that run's own peak, from os.wait4)
f. a whole short run with the default network: states/s and the play/sweep/optimise shares
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import bench_acting  # noqa: E402
import bench_core  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dqn_jax.algorithms.hvass.targets import resolve_target_method  # noqa: E402

RESULTS: list[dict] = []

# H100 SXM5 (80 GB) data-sheet peaks, dense (no sparsity).
H100 = {"bf16_flops": 989e12, "tf32_flops": 494.7e12, "fp32_flops": 66.9e12, "hbm_bytes_s": 3.35e12}


def report(section: str, name: str, value: str, target: str = "", ok: bool | None = None) -> None:
    verdict = "info" if ok is None else ("PASS" if ok else "FAIL")
    RESULTS.append({"section": section, "name": name, "value": value, "target": target, "verdict": verdict})
    print(f"[{section}] {name:<44} {value:<46} {('target ' + target) if target else '':<26} {verdict}",
          flush=True)


# ----------------------------------------------------------------------------- a. acting

def bench_acting_pipeline(quick: bool) -> None:
    # (steps per chunk, alternating pairs): a chunk of the hvass network is ~0.1 s per step here.
    plan = {"minimal": (25, 20 if quick else 40), "nature": (5, 10 if quick else 20), "hvass": (1, 6 if quick else 12)}
    for name, (chunk, pairs) in plan.items():
        r = bench_acting.measure(name, 8, chunk, pairs)
        extra = (r["agent_step_ms"] - r["raw_step_ms"])
        value = (f"{r['ratio']:.1%} ({r['agent']:.0f} vs {r['raw']:.0f} env-steps/s; "
                 f"+{extra:.2f} ms on a {r['raw_step_ms']:.2f} ms step)")
        if name == "minimal":
            report("a", "acting pipeline, minimal network, 8 games", value, ">= 85% of raw ale-py",
                   r["ratio"] >= 0.85)
            report("a", "  CPU per step (all threads), minimal network",
                   f"games {r['raw_cpu_ms']:.2f} ms, agent {r['agent_cpu_ms']:.2f} ms: overlap bound "
                   f"{r['raw_cpu_ms'] / r['agent_cpu_ms']:.0%} on {os.cpu_count()} cores")
        else:
            report("a", f"acting pipeline, {name} network, 8 games", value)


# ------------------------------------------------------------------------------ b. sweep

def bench_sweep(quick: bool) -> None:
    s = bench_core.bench_sweep(python_rows=5_000 if quick else 25_000, repeats=5 if quick else 20)
    how = "extrapolated from " + f"{s['python_rows'] * 8:,} states" if s["extrapolated"] else "timed in full"
    report("b", f"python sweep, {s['states']:,} states", f"{s['python_s']:.2f} s ({how})")
    auto = resolve_target_method("auto")
    for method in ("scan", "associative"):
        value = f"{s[f'{method}_speedup']:.0f}x ({s[f'{method}_s'] * 1e3:.1f} ms)"
        mark = " [auto here]" if method == auto else ""
        report("b", f"jitted sweep ({method}){mark} speed-up", value, ">= 100x",
               s[f"{method}_speedup"] >= 100 if method == auto else None)


# ---------------------------------------------------------------------------- c. learner

def forward_flops(batch: int = 128, num_actions: int = 4) -> tuple[float, int]:
    """XLA's FLOP count of the hvass forward pass at ``batch``, and the parameter count."""
    from dqn_jax.config import NetworkConfig
    from dqn_jax.core.networks import make_network

    network = make_network(NetworkConfig(), num_actions)
    x = jax.ShapeDtypeStruct((batch,) + bench_core.STATE_SHAPE, jnp.uint8)
    params = jax.eval_shape(network.init, jax.random.key(0), x)
    cost = jax.jit(network.apply).lower(params, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    n_params = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params))
    return float(cost["flops"]), n_params


def gpu_bound(batch: int = 128) -> dict:
    """Upper bound on H100 optimise samples/s from FLOPs and parameter/optimiser bytes.

    time per update >= max(FLOPs / peak, bytes / HBM bandwidth), with
    FLOPs = 3 x forward FLOPs (forward + backward: the backward pass costs about twice
    the forward: gradients w.r.t. activations and w.r.t. weights), and bytes = 8 x
    parameter bytes (forward read, backward read, gradient write + read, RMSProp
    accumulator read + write, parameter read + write). Activations and the batch
    gather (128 x 16.8 kB) are small next to the 154 MB of float32 parameters.
    """
    fwd, n_params = forward_flops(batch)
    flops = 3 * fwd
    moved = 8 * 4 * n_params
    out = {"forward_flops": fwd, "step_flops": flops, "params": n_params, "step_bytes": moved}
    t_bytes = moved / H100["hbm_bytes_s"]
    for prec in ("fp32", "tf32", "bf16"):
        t = max(flops / H100[f"{prec}_flops"], t_bytes)
        out[f"{prec}_samples_s"] = batch / t
        out[f"{prec}_bound_by"] = "compute" if flops / H100[f"{prec}_flops"] > t_bytes else "memory"
    return out


def frames_vs_states(quick: bool) -> None:
    """The reference recipe's step from a memory of frames beside one of whole states: what
    rebuilding the stacks costs for a quarter of the bytes (20,000 states: both fit beside
    anything else running)."""
    step = {}
    for storage in ("states", "frames"):
        cfg = _compose(["experiment=breakout_dopamine_dqn", "memory.size=20000", f"memory.storage={storage}"])
        step[storage] = bench_core.bench_dqn_update(cfg, steps=30 if quick else 150)
    frames, states = step["frames"], step["states"]
    report("c", "reference DQN step, memory of frames vs states",
           f"{frames['step_ms'] / states['step_ms']:.2f}x the time ({frames['step_ms']:.1f} vs "
           f"{states['step_ms']:.1f} ms) for {frames['memory_bytes_per_state']:,.0f} vs "
           f"{states['memory_bytes_per_state']:,.0f} bytes of state a state")


def bench_learner(quick: bool) -> None:
    opt = bench_core.bench_optimise(iterations=3 if quick else 10)
    report("c", f"optimise loop ({opt['loop']}), hvass, batch 128, {jax.default_backend()}",
           f"{opt['samples_per_s']:.0f} samples/s ({opt['steps_per_s']:.2f} steps/s)")
    s = bench_core.bench_sampler(batches=50 if quick else 200, repeats=3 if quick else 5)
    report("c", f"error-split sampler per batch, {s['states']:,} states",
           f"{s['new_s'] * 1e6:.0f} us vs {s['old_s'] * 1e6:.0f} us before: {s['speedup']:.0f}x "
           f"(+ {s['prepare_s'] * 1e3:.1f} ms once per cycle)")
    d = bench_core.bench_dtypes(steps=2 if quick else 4, rounds=2 if quick else 3)
    report("c", "hvass update, bfloat16 vs float32",
           f"{d['bfloat16'] / d['float32']:.0%} of the float32 speed ({d['bfloat16']:.2f} vs "
           f"{d['float32']:.2f} steps/s); products asked in {'/'.join(d['asked'])}, compiled "
           f"in {'/'.join(d['compiled'])}")
    step_ms = {}
    for algorithm, name in (("dqn", "DQN"), ("double_dqn", "Double DQN")):
        cfg = _compose(["experiment=compare_algorithms", f"algorithm={algorithm}"])
        q = bench_core.bench_dqn_update(cfg, steps=50 if quick else 300)
        step_ms[algorithm] = q["step_ms"]
        report("c", f"{name} gradient step, experiment=compare_algorithms, batch {cfg.memory.batch_size}",
               f"{q['step_ms']:.1f} ms ({q['params']:,} params; compiled {q['compiles']}x): "
               f"<= {cfg.algorithm.train_every * 1e3 / q['step_ms']:.0f} states/s at a step per "
               f"{cfg.algorithm.train_every} states")
    frames_vs_states(quick)
    for states in (200_000, 1_000_000):  # the default memory; the paper's
        draw_ms = bench_core.bench_priority_draw(states, batches=50 if quick else 300)
        report("c", f"prioritised draw of a batch of 32, {states:,} states",
               f"{draw_ms:.2f} ms: {draw_ms / step_ms['dqn']:.0%} of the DQN step above")
    b = gpu_bound()
    report("c", "hvass forward / update FLOPs per batch 128",
           f"{b['forward_flops'] / 1e9:.1f} / {b['step_flops'] / 1e9:.1f} GFLOP (update = 3x fwd)")
    report("c", "bytes moved per update (8 x params x 4 B)",
           f"{b['step_bytes'] / 1e9:.2f} GB ({b['params'] / 1e6:.1f}M params)")
    for prec, label in (("fp32", "fp32 (no tensor cores, 67 TF/s)"), ("tf32", "tf32 (495 TF/s)"),
                        ("bf16", "bf16 (989 TF/s)")):
        report("c", f"H100 bound, {label}",
               f"<= {b[f'{prec}_samples_s']:,.0f} samples/s ({b[f'{prec}_bound_by']}-bound, 3.35 TB/s HBM)")


# --------------------------------------------------------------------------- d. tracking

TINY_NET = ["network.conv_features=[4,8]", "network.conv_kernels=[3,3]", "network.conv_strides=[4,4]",
            "network.dense=[16]"]


def _compose(overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from dqn_jax.config import register_configs, validate

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name="config", overrides=list(overrides)))
    validate(cfg)
    return cfg


class _TrainHarness:
    """What app.run_train sets up, kept so that runs can alternate in one process."""

    def __init__(self, root: Path, overrides):
        from dqn_jax import algorithms
        from dqn_jax.config import num_envs
        from dqn_jax.envs import make_games

        self.root = root
        self.cfg = _compose([f"paths.root={root}", "progress=false", "checkpoint.resume=false", *overrides])
        cfg = self.cfg
        self.games = make_games(cfg.env, num_envs(cfg.env), cfg.seed)
        self.parts = algorithms.make_parts(cfg, self.games, cfg.seed)
        self.algorithm = algorithms.build(cfg, self.parts, self.games)
        self.training = None  # built by the first run, reused by the others
        self.runs = 0
        self.send_share: list[float] = []  # MLflow runs: the tracker's CPU time sending / run time

    def train(self, tracker, run_dir: Path):
        """One training run from the initial train state: (state, key, TrainResult)."""
        import dataclasses

        import jax.tree_util as tu

        from dqn_jax.app import build_training, curves_every
        from dqn_jax.runner.checkpoints import Checkpointer
        from dqn_jax.runner.logs import TrainingLog
        from dqn_jax.runner.loop import Counters, train

        run_dir.mkdir(parents=True, exist_ok=True)
        checkpointer = Checkpointer(run_dir / "checkpoints", self.cfg.checkpoint.keep)
        state = self.algorithm.init(tu.tree_map(jnp.copy, self.parts.train_state))
        log = TrainingLog(run_dir, tracker, console=self.cfg.progress)
        if self.training is None:
            self.training = build_training(self.cfg, self.games, self.parts, self.algorithm, checkpointer, log)
        else:  # the same player and algorithm: compiled once for all the runs
            self.training = dataclasses.replace(self.training, checkpointer=checkpointer, log=log,
                                                after_cycle=curves_every(log, 300))
        return train(self.training, state=state, key=self.parts.key, counters=Counters(), seed=self.cfg.seed)

    def test(self, params, key, episodes: int, max_states: int | None = None) -> dict:
        """The tutorial's test statistics over ``episodes`` episodes with the test epsilon."""
        import optax

        from dqn_jax.core.acting import Player
        from dqn_jax.runner.testing import test

        player = Player(self.parts.network, self.cfg.env, optax.constant_schedule(self.cfg.schedule.epsilon_test))
        return test(games=self.games, player=player, params=params, key=key, episodes=episodes,
                    seed=self.cfg.seed, progress=self.cfg.progress, max_states=max_states)

    def seconds(self, logger: str) -> float:
        """Wall-clock seconds of one training run (train() and the final flush)."""
        from dqn_jax import tracking

        self.runs += 1
        cfg = self.cfg
        cfg.logger.name = logger
        run_dir = self.root / "runs" / f"r{self.runs}"
        run_dir.mkdir(parents=True)
        tracker = tracking.start_tracker(cfg, run_dir, run_name=f"bench-{self.runs}", resume=False)
        start = time.perf_counter()
        self.train(tracker, run_dir)
        tracker.flush()
        seconds = time.perf_counter() - start
        if logger == "mlflow":
            self.send_share.append(tracker.send_cpu_seconds / seconds)
        tracker.finish("FINISHED")
        return seconds

    def close(self):
        self.games.close()


def tracking_ratio(off, on) -> dict:
    """The speed ratio with the tracker from paired run times: a 10 %-trimmed mean of the
    per-pair log ratios (a shared machine throws the odd pair far off), its 95 % confidence
    half-width (Student t on the trimmed values), and the per-pair median."""
    logs = np.sort(np.log(np.asarray(off, float) / np.asarray(on, float)))
    cut = int(0.1 * len(logs))
    kept = logs[cut:len(logs) - cut] if len(logs) - 2 * cut >= 2 else logs
    mean = float(kept.mean())
    t95 = 2.0 if len(kept) > 30 else {2: 12.7, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31,
                                      10: 2.26}.get(len(kept), 2.1)
    half = t95 * float(kept.std(ddof=1)) / np.sqrt(len(kept)) if len(kept) > 1 else float("inf")
    return {"ratio": float(np.exp(mean)), "low": float(np.exp(mean - half)), "high": float(np.exp(mean + half)),
            "half_width": float(np.exp(half) - 1), "median": float(np.exp(np.median(logs))), "pairs": len(logs)}


def bench_tracking(quick: bool) -> None:
    # Many runs of a few seconds, alternating in both orders: the machine's speed drifts
    # by tens of percent within seconds, so only short alternating runs see the same
    # speed, and a few seconds make the one synchronous flush at the end of a run small.
    # A fixed 14 pairs gave 94.8-101 % from one run of the bench to the next, so pairs are
    # added until the 95 % confidence interval of the ratio is within +-1 % (two runs then
    # agree within 2 %), from `least` pairs up to `most`.
    steps = 1500 if quick else 3000
    least, most = (6, 16) if quick else (14, 80)
    goal = 0.01
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        h = _TrainHarness(Path(tmp), [*TINY_NET, "memory.size=2000", "memory.batch_size=32", "env.num_envs=2",
                                      f"steps={steps}"])
        h.seconds("none")  # compile everything once
        h.seconds("mlflow")
        seconds = {"mlflow": [], "none": []}
        for i in range(most):
            for logger in (("mlflow", "none") if i % 2 == 0 else ("none", "mlflow")):
                seconds[logger].append(h.seconds(logger))
            if i + 1 >= least and i % 2 == 1 and tracking_ratio(seconds["none"], seconds["mlflow"])["half_width"] <= goal:
                break
        h.close()
    send_share = float(np.median(h.send_share))
    on, off = np.array(seconds["mlflow"]), np.array(seconds["none"])
    r = tracking_ratio(off, on)
    settled = "" if r["half_width"] <= goal else f"; NOT settled to +-{goal:.0%} in {most} pairs"
    report("d", f"training with MLflow vs logger off ({r['pairs']} pairs x {steps} states)",
           f"{r['ratio']:.1%} (95% CI {r['low']:.1%}-{r['high']:.1%}{settled}; per-pair median "
           f"{r['median']:.1%}; {steps / np.median(on):.0f} vs {steps / np.median(off):.0f} states/s)",
           ">= 98%", r["ratio"] >= 0.98)
    report("d", "CPU time sending metrics, share of the run", f"{send_share:.2%} (the tracker's own cost, "
           "measured in its thread)")


# ----------------------------------------------------------------------------- e. memory

def _run_app(args, cwd: Path, timeout: float):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "dqn_jax", f"paths.root={cwd}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


# Runs dqn_jax's command line and, as the interpreter exits, writes the process's own
# VmHWM: the peak RSS of its address space since exec. ru_maxrss (wait4, getrusage) keeps
# the high-water mark from before exec too, and a child forked from this benchmark, grown
# to gigabytes by the sections before, reported 17.8 GB for a 3.9 GB run.
_PEAK_RSS_RUNNER = """
import atexit, runpy, sys

def _write_peak(path):
    with open('/proc/self/status') as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))
    with open(path, 'w') as out:
        out.write(str(kib * 1024))

atexit.register(_write_peak, sys.argv.pop(1))
sys.argv[0] = 'dqn_jax'
runpy.run_module('dqn_jax', run_name='__main__', alter_sys=True)
"""


def _run_app_rusage(args, cwd: Path, timeout: float):
    """_run_app, with the run's own peak RSS: (returncode, stdout, stderr, peak RSS in bytes).

    The run reports its VmHWM (the peak since its exec) as it exits, so neither this
    benchmark's size nor its earlier children's can show in the figure."""
    peak_file = cwd / "peak-rss"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", _PEAK_RSS_RUNNER, str(peak_file), f"paths.root={cwd}", *args],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    peak = int(peak_file.read_text()) if peak_file.is_file() else 0
    return result.returncode, result.stdout, result.stderr, peak


def bench_memory(quick: bool) -> None:
    size = bench_core.memory_bytes_per_state()
    report("e", "replay memory bytes per state", f"{size['bytes_per_state']:,.0f} B "
           f"({size['total_gb']:.2f} GB for {size['states']:,})", "within 5% of 16,800",
           abs(size["bytes_per_state"] / 16_800 - 1) <= 0.05)
    # One learning cycle of a 200,000-state run: the replay fraction starts at 0.1 and
    # rises by 0.9 per 5M states, so the first sweep and optimise come after ~20,750 states.
    games = 4
    steps = 21_000
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        start = time.perf_counter()
        returncode, stdout, stderr, peak = _run_app_rusage(
            [*TINY_NET, "memory.size=200000", f"env.num_envs={games}", "logger=none", f"steps={steps}",
             "progress=false", "schedule.max_epochs.start=0.05", "algorithm.min_epochs=0.05"],
            Path(tmp), timeout=900)
        seconds = time.perf_counter() - start
        found = re.search(r"^\s*cycles\s+(\d+)", stdout, re.MULTILINE)
        cycles = int(found.group(1)) if found else 0
    if returncode != 0:
        report("e", "peak RSS of a 200,000-state run", f"run failed: {stderr[-300:]!r}", "<= 1.3x memory", False)
        return
    ratio = peak / (size["total_gb"] * 1e9)
    if cycles < 1:
        report("e", "peak RSS of a 200,000-state run", "the run ended before its first learning cycle",
               "<= 1.3x the memory", False)
        return
    report("e", f"peak RSS, 200,000-state memory, {steps:,} st., {cycles} cycle",
           f"{peak / 1e9:.2f} GB = {ratio:.2f}x the memory ({seconds:.0f} s run)", "<= 1.3x the memory",
           ratio <= 1.3)


# --------------------------------------------------------------------------- f. whole run

def bench_whole_run(quick: bool) -> None:
    from mlflow.tracking import MlflowClient

    memory = 1000 if quick else 2000
    steps = 500 if quick else 1000
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        start = time.perf_counter()
        r = _run_app([f"memory.size={memory}", f"steps={steps}", "progress=false", "name=bench"],
                     Path(tmp), timeout=900)
        wall = time.perf_counter() - start
        if r.returncode != 0:
            report("f", "whole run (default config)", f"run failed: {r.stderr[-300:]!r}")
            return
        client = MlflowClient(tracking_uri=f"sqlite:///{tmp}/mlruns.db")
        exp = client.get_experiment_by_name("dqn_jax/breakout")
        (run,) = [x for x in client.search_runs([exp.experiment_id])
                  if "mlflow.parentRunId" not in x.data.tags]
        parts = {}
        for name in ("play", "sweep", "optimise"):
            parts[name] = sum(m.value for m in client.get_metric_history(run.info.run_id, f"cycle/{name}_seconds"))
        cycles = len(client.get_metric_history(run.info.run_id, "cycle/play_seconds"))
        states = run.data.metrics["train/states"]
    total = sum(parts.values())
    shares = ", ".join(f"{k} {v / total:.0%}" for k, v in parts.items())
    report("f", f"whole run, hvass, memory {memory}, {cycles} cycles",
           f"{states / total:.0f} states/s over the cycles ({shares})")
    report("f", "whole run, wall clock incl. start-up", f"{states / wall:.0f} states/s ({wall:.0f} s)")


SECTIONS = {"acting": bench_acting_pipeline, "sweep": bench_sweep, "learner": bench_learner,
            "tracking": bench_tracking, "memory": bench_memory, "run": bench_whole_run}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (about half the time)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
          f"{os.cpu_count()} cores", flush=True)
    start = time.perf_counter()
    for name in args.only.split(","):
        t = time.perf_counter()
        SECTIONS[name](args.quick)
        print(f"  ({name}: {time.perf_counter() - t:.0f} s)", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s", flush=True)
    return 0 if all(r["verdict"] != "FAIL" for r in RESULTS) else 1


if __name__ == "__main__":
    raise SystemExit(main())

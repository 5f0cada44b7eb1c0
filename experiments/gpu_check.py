"""`make gpu-check`: the GPU benchmarks and a timed Breakout run, written into the docs.

    python experiments/gpu_check.py [--minutes 10] [--only bench,train] [--out DIR]
    python experiments/gpu_check.py --tiny --docs-dir /tmp/docs     # a small smoke run (CPU)

On the machine it runs on (a GPU machine, or anything with --tiny):

* bench: acting with the tutorial's network against raw ale-py (target >= 70 %); the
  backward sweep; the optimise loop against the computed H100 bound (target >= 50 %),
  the error-split sampler before and after the per-cycle plan, bfloat16 vs float32;
* train: Breakout with the tutorial's network for ``--minutes`` (stopped as Ctrl-C
  stops a run: at the next safe point, checkpoint saved), its states/s against the
  tutorial's 236, the share of play / sweep / optimise, then 30 test episodes.

Each part appends a dated section naming the machine to ``docs/benchmarks.md`` (bench
and the whole run's speed) and ``docs/results.md`` (the run's scores); ``--out DIR``
also copies both files there (a device machine sends back only such a folder). Needs
only the repository, JAX, Flax, Optax and the wheels listed in docs/benchmarks.md;
tracking is off (``logger=none``), the figures come from the run itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

import bench  # noqa: E402
import bench_acting  # noqa: E402
import bench_core  # noqa: E402

from dqn_jax.config import NetworkConfig  # noqa: E402
from dqn_jax.runner.interrupts import StopRequest  # noqa: E402
from dqn_jax.runner.resources import describe_device  # noqa: E402
from dqn_jax.tracking import NullTracker  # noqa: E402

TUTORIAL_STATES_S = 127.6e6 / (150 * 3600)  # 127.6 M states in about 150 hours
TINY_NETWORK = NetworkConfig(conv_features=[4, 8], conv_kernels=[3, 3], conv_strides=[4, 4], dense=[16])


def machine() -> str:
    """The machine's name in one line: host, accelerator, cores."""
    gpu = ""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True)
        gpu = "; ".join(out.stdout.strip().splitlines()) if out.returncode == 0 else ""
    return (f"{platform.node()}: {gpu + ', ' if gpu else ''}{os.cpu_count()} CPU cores; "
            f"JAX on {describe_device()}")


# ---------------------------------------------------------------------------- benchmarks

def run_benchmarks(tiny: bool) -> None:
    games = 2 if tiny else 16
    network = "minimal" if tiny else "hvass"
    r = bench_acting.measure(network, games, 2 if tiny else 10, 2 if tiny else 20)
    bench.report("a", f"acting, {network} network, {games} games, vs raw ale-py",
                 f"{r['ratio']:.1%} ({r['agent']:.0f} vs {r['raw']:.0f} env-steps/s)", ">= 70%",
                 r["ratio"] >= 0.70)

    s = bench_core.bench_sweep(steps=500 if tiny else 25_000, python_rows=500 if tiny else 5_000,
                               repeats=2 if tiny else 20)
    for method in ("associative", "scan"):
        bench.report("b", f"backward sweep ({method}), {s['states']:,} states",
                     f"{s[f'{method}_s'] * 1e3:.2f} ms ({s[f'{method}_speedup']:.0f}x the Python loop)")

    net = TINY_NETWORK if tiny else None
    iterations = 2 if tiny else 2000
    bound = bench.gpu_bound()
    for dtype, prec in (("float32", "tf32"), ("bfloat16", "bf16")):
        cfg = None if net is None else dataclasses.replace(net, dtype=dtype)
        opt = bench_core.bench_optimise(iterations=iterations, dtype=dtype, network_cfg=cfg)
        ratio = opt["samples_per_s"] / bound[f"{prec}_samples_s"]
        bench.report("c", f"optimise ({opt['loop']} loop), {'tiny' if tiny else 'hvass'} {dtype}, batch 128",
                     f"{opt['samples_per_s']:,.0f} samples/s = {ratio:.1%} of the H100 {prec} bound "
                     f"({bound[f'{prec}_samples_s']:,.0f})", ">= 50% of the bound", ratio >= 0.5)
    sampler = bench_core.bench_sampler(states=20_000 if tiny else 200_000, batches=20 if tiny else 500)
    bench.report("c", f"error-split sampler per batch, {sampler['states']:,} states",
                 f"{sampler['new_s'] * 1e6:.0f} us vs {sampler['old_s'] * 1e6:.0f} us before "
                 f"({sampler['speedup']:.0f}x; plan {sampler['prepare_s'] * 1e3:.1f} ms per cycle)")


# ---------------------------------------------------------------------------- the timed run

class RecordingTracker(NullTracker):
    """Keeps the metrics the training loop logs: the run's own figures, no tracking server."""

    def __init__(self):
        self.metrics: list[tuple[int, dict]] = []

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.metrics.append((int(step), dict(metrics)))

    def series(self, name: str) -> list[float]:
        return [m[name] for _, m in self.metrics if name in m]


def timed_run(minutes: float, tiny: bool, root: Path, test_states: int) -> dict:
    """Breakout for ``minutes`` (a SIGINT at the end, as Ctrl-C), then the test episodes
    (at most ``test_states`` states: a weak agent can keep a Breakout episode going)."""
    overrides = ["logger=none", "name=gpu-check"]
    if tiny:
        overrides += [*bench.TINY_NET, "memory.size=256", "memory.batch_size=16", "env.num_envs=2"]
    harness = bench._TrainHarness(root, overrides)
    tracker = RecordingTracker()
    timer = threading.Timer(minutes * 60, os.kill, (os.getpid(), signal.SIGINT))
    print(f"training Breakout for {minutes:g} minutes", flush=True)
    with StopRequest(hint=False):
        start = time.perf_counter()
        timer.start()
        try:
            state, key, result = harness.train(tracker, root / "runs" / "gpu-check")
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
    episodes = 2 if tiny else 30
    print(f"trained {result.counters.states:,} states in {seconds:.0f} s; testing {episodes} episodes", flush=True)
    test = harness.test(state.train.params, key, episodes, max_states=test_states)
    harness.close()
    stages = {name: sum(tracker.series(f"cycle/{name}_seconds")) for name in ("play", "sweep", "optimise")}
    return {"seconds": seconds, "states": result.counters.states, "episodes": result.counters.episodes,
            "cycles": result.counters.cycles, "mean30": result.last_mean30, "stages": stages,
            "games": harness.games.num_envs, "network": "tiny" if tiny else "hvass", "memory": harness.cfg.memory.size, "test": test,
            "scores": tracker.series("episode/score")}


def report_run(run: dict) -> tuple[list[str], list[str]]:
    """Lines for docs/benchmarks.md and docs/results.md."""
    rate = run["states"] / run["seconds"]
    total = sum(run["stages"].values()) or 1.0
    shares = ", ".join(f"{k} {v / total:.0%}" for k, v in run["stages"].items())
    bench.report("f", f"whole run, {run['network']} network, {run['games']} games, memory {run['memory']:,}",
                 f"{rate:,.0f} states/s = {rate / TUTORIAL_STATES_S:.2f}x the tutorial's "
                 f"{TUTORIAL_STATES_S:.0f} ({shares}; {run['cycles']} cycles)")
    test = run["test"]
    got = (f"mean {test['mean_score']:.1f} (min {test['min_score']:g}, max {test['max_score']:g}, "
           f"std {test['std_score']:.1f}) over {test['episodes']:.0f} episodes"
           if test.get("episodes") else "no test episode finished")
    results = [
        "| figure | value |", "| --- | --- |",
        f"| training | {run['seconds'] / 60:.1f} min, {run['states']:,} states, {run['episodes']} episodes, "
        f"{run['cycles']} learning cycles |",
        f"| speed | {rate:,.0f} states/s ({rate / TUTORIAL_STATES_S:.2f}x the tutorial's ≈ 236 states/s; "
        f"{shares}) |",
        f"| training mean of the last 30 episodes | {run['mean30']:.2f} |",
        f"| test (ε = test epsilon) | {got} |",
    ]
    return results


# ---------------------------------------------------------------------------- docs

def table(results: list[dict]) -> list[str]:
    lines = ["| | figure | value | target | verdict |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        target = r["target"] or "–"
        lines.append(f"| {r['section']} | {r['name'].strip()} | {r['value']} | {target} | {r['verdict']} |")
    return lines


def append_section(path: Path, title: str, lines: list[str]) -> None:
    text = path.read_text() if path.exists() else ""
    path.write_text(text.rstrip("\n") + f"\n\n## {title}\n\n" + "\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the Breakout run")
    parser.add_argument("--only", default="bench,train", help="bench, train or both")
    parser.add_argument("--test-states", type=int, default=400_000,
                        help="stop the 30 test episodes after this many states (all games)")
    parser.add_argument("--tiny", action="store_true", help="small sizes: a smoke run for a CPU")
    parser.add_argument("--docs-dir", type=Path, default=ROOT / "docs")
    parser.add_argument("--out", type=Path, default=None, help="also copy the two docs files here")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    if not parts <= {"bench", "train"}:
        parser.error(f"--only {args.only!r}: choose bench, train or bench,train")
    where = machine()
    date = datetime.date.today().isoformat()
    commit = "unknown"  # a device machine's copy of the tree may have no git
    if shutil.which("git"):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip() or commit
    print(f"gpu-check on {where}", flush=True)
    command = " ".join(sys.argv[1:] if argv is None else argv)
    head = [f"- machine: {where}", f"- commit: `{commit}`; command: `make gpu-check ARGS=\"{command}\"`", ""]
    results_lines = None
    if "bench" in parts:
        run_benchmarks(args.tiny)
    if "train" in parts:
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
            run = timed_run(args.minutes, args.tiny, Path(tmp), 4000 if args.tiny else args.test_states)
        results_lines = report_run(run)
    kind = "tiny smoke run" if args.tiny else "GPU check"
    append_section(args.docs_dir / "benchmarks.md", f"{kind}, {date}, {platform.node()}",
                   head + table(bench.RESULTS))
    if results_lines is not None:
        append_section(args.docs_dir / "results.md", f"Breakout, {args.minutes:g} minutes ({kind}), {date}, "
                       f"{platform.node()}", head + results_lines)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("benchmarks.md", "results.md"):
            shutil.copy(args.docs_dir / name, args.out / name)
    print(f"sections written to {args.docs_dir}/benchmarks.md" +
          (" and results.md" if results_lines else ""), flush=True)
    return 0 if all(r["verdict"] != "FAIL" for r in bench.RESULTS) or args.tiny else 1


if __name__ == "__main__":
    raise SystemExit(main())

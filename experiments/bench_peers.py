"""`make bench-peers`: dqn_jax's DQN against the JAX DQNs a user would pick instead.

    make bench-peers                     # installs the peers into .venv-peers/, then the full run
    make bench-peers ARGS=--quick        # a few minutes
    .venv/bin/python experiments/bench_peers.py [--quick] [--only dqn_jax,sbx,cleanrl,dopamine] [--markdown]

Each framework trains Breakout for the same number of agent states with the same work:
the Nature CNN (32-64-64 convolutions, 512 dense) on 84x84 grayscale frames, 4 stacked,
float32; one game; batch 32; one gradient step per 4 states after the same warm-up; the
same replay size; epsilon from 1.0 to 0.1 over the warm-up (so that the timed part plays
at 0.1, as most of a long run does); a target copy every 1,000 states. What a peer
cannot match is said in its row of the table.

How states/s is measured: each run is a process of its own, started from its own virtual
environment (peers: .venv-peers/<name>; dqn_jax: `python -m dqn_jax` from this checkout).
The harness stamps every progress line the run prints (the per-episode lines of dqn_jax,
CleanRL and Dopamine's Runner, a 250-state callback line for SBX) with its arrival time,
and states/s is

    (states at the last line - states at the first line past warm-up + skip)
    / (time between those two lines)

so start-up, compilation of the first gradient step (inside `skip`), the warm-up and the
end (checkpoint, summary) are outside the window, and what is inside is the whole
training loop: acting, storing, sampling, learning and target copies (and the peer's own
tracking where it has it on by default). A run still going `window_s` seconds into its
window (a slow peer) is stopped there and timed over those seconds. The frameworks run
one after the other, once each; on a shared machine run it twice and compare.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS_VENV = ROOT / ".venv-peers"
PEERS_DIR = ROOT / "experiments" / "peers"


@dataclasses.dataclass(frozen=True)
class Work:
    """The matched work, in agent states (one state = one decision = 4 emulator frames)."""

    states: int
    warmup: int
    memory: int
    skip: int  # states after the warm-up left out of the window (the first steps' compile)
    window_s: float  # a run is stopped once it has been timed this long (a slow peer's budget)
    batch: int = 32
    train_every: int = 4
    target_every: int = 1000  # states between target-network copies (250 gradient steps)
    eps_start: float = 1.0
    eps_end: float = 0.1
    games: int = 1
    seed: int = 0

    @property
    def eps_span(self) -> int:
        return self.warmup


QUICK = Work(states=6_000, warmup=2_000, memory=10_000, skip=500, window_s=60)
FULL = Work(states=30_000, warmup=10_000, memory=100_000, skip=2_000, window_s=300)


@dataclasses.dataclass(frozen=True)
class Framework:
    name: str
    pattern: str  # a progress line; group "states" is the agent states so far
    packages: tuple[str, ...]  # whose versions the table shows
    settings: str  # what the table says about its settings
    differs: str  # what it cannot match

    def python(self) -> Path:
        return ROOT / ".venv" / "bin" / "python" if self.ours else PEERS_VENV / self.name / "bin" / "python"

    @property
    def ours(self) -> bool:
        return self.name.startswith("dqn_jax")


FRAMEWORKS = {
    "dqn_jax": Framework(
        "dqn_jax", r"^\s*\d+:(?P<states>\d+)\s+epsilon", ("jax",),
        "algorithm=dqn network=nature env.encoding=frame_stack 84x84, RMSProp (centred), Huber, logger=none, "
        "algorithm.learner_devices=2",
        "learns beside acting: the batch split over 2 CPU devices of the learners' own, the games played "
        "with the network one gradient step old; ALE v5 frame-skip 4 with sticky actions (0.25), as dqn_jax "
        "plays; MLflow off (section d of make bench: its cost is within 2%)"),
    "dqn_jax_in_turn": Framework(
        "dqn_jax_in_turn", r"^\s*\d+:(?P<states>\d+)\s+epsilon", ("jax",),
        "as dqn_jax, with algorithm.learner_devices=0 (the default)",
        "acts and learns in turn on one device, as the peers do"),
    "sbx": Framework(
        "sbx", r"^progress states=(?P<states>\d+)", ("sbx-rl", "stable-baselines3", "jax"),
        "DQN('CnnPolicy', net_arch=[512]), SB3 make_atari_env + VecFrameStack(4), optax.rmsprop (centred), Huber",
        "SB3's replay buffer (stores next states too), NoFrameskip-v4 + max-and-skip 4; a 250-state "
        "callback prints progress"),
    "cleanrl": Framework(
        "cleanrl", r"^global_step=(?P<states>\d+), episodic_return", ("cleanrl", "stable-baselines3", "jax"),
        "dqn_atari_jax.py unchanged (its CLI flags), SB3 ReplayBuffer(optimize_memory_usage=True)",
        "Adam and MSE loss (hard-coded), TensorBoard scalars every 100 steps (built in), epsilon draws skip the "
        "forward pass, NoFrameskip-v4 + max-and-skip 4"),
    "dopamine": Framework(
        "dopamine", r"Steps executed: (?P<states>\d+)", ("dopamine-rl", "jax"),
        "JaxDQNAgent through run_experiment.Runner (gin bindings), Nature network, RMSProp (centred), Huber",
        "epsilon 1 through the warm-up, then 0.1 (it decays only after); its replay buffer (compressed "
        "transitions), ALE v5 sticky actions with its own max-pooled skip; its default summaries"),
}


# ------------------------------------------------------------------------- the commands

def command(name: str, work: Work, run_dir: Path, learners: int = 2) -> list[str]:
    """The command line that trains ``name`` on ``work`` (run with cwd=run_dir); dqn_jax's row
    learns on ``learners`` devices of their own."""
    py = str(FRAMEWORKS[name].python())
    if FRAMEWORKS[name].ours:
        learners = learners if name == "dqn_jax" else 0
        return [py, "-m", "dqn_jax", f"algorithm.learner_devices={learners}", "env=breakout", "algorithm=dqn",
                "network=nature",
                "env.encoding=frame_stack", "env.stack_size=4", "env.height=84", "env.width=84",
                f"env.num_envs={work.games}", "network.dtype=float32", f"memory.size={work.memory}",
                f"memory.batch_size={work.batch}", f"algorithm.warmup={work.warmup}",
                f"algorithm.train_every={work.train_every}",
                f"algorithm.target_copy_states={work.target_every}",
                f"schedule.epsilon.start={work.eps_start}", f"schedule.epsilon.end={work.eps_end}",
                f"schedule.epsilon.span={work.eps_span}", f"steps={work.states}", f"seed={work.seed}",
                "logger=none", "progress=true", "checkpoint.resume=false", "name=bench-peers",
                f"paths.root={run_dir}"]
    if name == "sbx":
        return [py, str(PEERS_DIR / "sbx_dqn.py"), f"--states={work.states}", f"--warmup={work.warmup}",
                f"--memory={work.memory}", f"--batch={work.batch}", f"--train-every={work.train_every}",
                f"--target-every={work.target_every}", f"--eps-start={work.eps_start}",
                f"--eps-end={work.eps_end}", f"--eps-span={work.eps_span}", f"--seed={work.seed}"]
    if name == "cleanrl":
        return [py, str(PEERS_DIR / "cleanrl_run.py"), "--env-id=BreakoutNoFrameskip-v4",
                f"--total-timesteps={work.states}", f"--learning-starts={work.warmup}",
                f"--buffer-size={work.memory}", f"--batch-size={work.batch}",
                f"--train-frequency={work.train_every}", f"--target-network-frequency={work.target_every}",
                f"--start-e={work.eps_start}", f"--end-e={work.eps_end}",
                f"--exploration-fraction={work.eps_span / work.states}", f"--seed={work.seed}"]
    if name == "dopamine":
        return [py, str(PEERS_DIR / "dopamine_dqn.py"), f"--base-dir={run_dir}", f"--states={work.states}",
                f"--warmup={work.warmup}", f"--memory={work.memory}", f"--batch={work.batch}",
                f"--train-every={work.train_every}", f"--target-every={work.target_every}",
                f"--eps-end={work.eps_end}", f"--eps-span={work.eps_span}", f"--seed={work.seed}"]
    raise KeyError(name)


# ------------------------------------------------------------------ parsing and the ratio

def progress_points(lines, pattern: str) -> list[tuple[float, int]]:
    """(arrival time, states) of each line matching ``pattern``, from (time, line) pairs.

    Lines may hold several records separated by carriage returns (progress bars)."""
    regex = re.compile(pattern)
    points = []
    for t, line in lines:
        for part in line.split("\r"):
            found = regex.search(part)
            if found:
                points.append((t, int(found.group("states"))))
    return points


def states_per_second(points, start: int) -> tuple[float, int, float]:
    """(states/s, states timed, seconds timed) between the first point at or past ``start``
    states and the last point. Raises ValueError when fewer than two points are there."""
    window = [(t, s) for t, s in points if s >= start]
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        raise ValueError(f"fewer than two progress lines past {start:,} states ({len(points)} lines in all)")
    (t0, s0), (t1, s1) = window[0], window[-1]
    return (s1 - s0) / (t1 - t0), s1 - s0, t1 - t0


def table(rows: list[dict], markdown: bool = False) -> str:
    """The printed table: one row per framework, its ratio to dqn_jax's states/s."""
    base = next((r["states_s"] for r in rows if r["name"] == "dqn_jax" and r.get("states_s")), None)
    head = ("peer", "version", "settings", "differs from dqn_jax", "states/s", "states per CPU-second",
            "ratio to dqn_jax")
    body = []
    for r in rows:
        if r.get("states_s"):
            cut = ", then stopped" if r.get("stopped") else ""
            speed = f"{r['states_s']:.1f} ({r['timed_states']:,} st. in {r['timed_s']:.0f} s{cut})"
            per_cpu = (f"{r['timed_states'] / r['cpu_s']:.1f} ({r['cpu_s'] / r['timed_s']:.0%} of a core)"
                       if r.get("cpu_s") else "?")
            ratio = f"{r['states_s'] / base:.2f}" if base else "n/a (dqn_jax did not run)"
        else:
            speed, per_cpu, ratio = "did not run", "", r.get("error", "")
        body.append((r["name"], r["version"], r["settings"], r["differs"], speed, per_cpu, ratio))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in body]
        return "\n".join(lines)
    # plain text: the short columns on one line, settings and differences under it
    lines = [f"{'peer':<10} {'version':<44} {'states/s':<40} {'per CPU-second':<26} ratio to dqn_jax"]
    for name, version, settings, differs, speed, per_cpu, ratio in body:
        lines.append(f"{name:<10} {version:<44} {speed:<40} {per_cpu:<26} {ratio}")
        lines.append(f"{'':<10} settings: {settings}")
        lines.append(f"{'':<10} differs:  {differs}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ running

def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def records(fd: int):
    """(arrival time, record) for each record read from ``fd``, a record ending at \n or \r."""
    pending = b""
    while chunk := os.read(fd, 1 << 16):
        now = time.monotonic()
        *done, pending = re.split(rb"[\r\n]", pending + chunk)
        for record in done:
            if record.strip():
                yield now, record.decode(errors="replace")
    if pending.strip():
        yield time.monotonic(), pending.decode(errors="replace")


def versions(fw: Framework, dqn_jax_root: Path = ROOT) -> str:
    py = fw.python()
    if not py.exists():
        raise FileNotFoundError(f"{py} is missing: `make bench-peers` installs it")
    code = ("import importlib.metadata as m, sys\n"
            "print(' '.join(f'{p} {m.version(p)}' for p in sys.argv[1:]))")
    out = subprocess.run([str(py), "-c", code, *fw.packages], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1])
    text = out.stdout.strip()
    if fw.ours:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=dqn_jax_root, capture_output=True,
                                text=True).stdout.strip() or "?"
        dirty = subprocess.run(["git", "status", "--porcelain", "dqn_jax"], cwd=dqn_jax_root, capture_output=True,
                               text=True).stdout.strip()
        text = f"commit {commit}{'+' if dirty else ''} {text}"
    return text


def settings_of(name: str, learners: int = 2) -> str:
    """What the table says about ``name``'s settings (dqn_jax's row: its learner devices)."""
    settings = FRAMEWORKS[name].settings
    return settings.replace("learner_devices=2", f"learner_devices={learners}") if name == "dqn_jax" else settings


def run_one(name: str, work: Work, timeout: float, log_dir: Path | None, dqn_jax_root: Path = ROOT,
            learners: int = 2) -> dict:
    fw = FRAMEWORKS[name]
    row = {"name": name, "settings": settings_of(name, learners), "differs": fw.differs, "version": "?"}
    try:
        row["version"] = versions(fw, dqn_jax_root)
    except Exception as e:  # noqa: BLE001 - reported in the table
        row["error"] = f"not installed: {e}"
        return row
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if fw.ours:
        env["PYTHONPATH"] = str(dqn_jax_root)  # this checkout's dqn_jax, whatever the venv's points at
    lines: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory(prefix=f"bench-peers-{name}-") as tmp:
        cmd = command(name, work, Path(tmp), learners)
        start = time.monotonic()
        # each record (ended by \n or by a progress bar's or Dopamine's \r) stamped as it arrives
        p = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)  # a process group of its own, ended whole
        timer = threading.Timer(timeout, kill_group, (p.pid,))
        timer.start()
        first, stopped = None, False  # when the timed window began; whether the harness ended the run
        cpu: dict[float, float | None] = {}  # the run's CPU seconds when each progress line came
        try:
            for now, line in records(p.stdout.fileno()):
                lines.append((now, line))
                points = progress_points([(now, line)], fw.pattern)
                if points and not stopped:
                    cpu[now] = cpu_seconds(p.pid)
                    if first is None and points[-1][1] >= work.warmup + work.skip:
                        first = now
                    if first is not None and now - first >= work.window_s:
                        kill_group(p.pid)  # timed long enough: the rest changes nothing
                        stopped = True
            p.wait()
        finally:
            timer.cancel()
        wall = time.monotonic() - start
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"{name}.log").write_text(" ".join(cmd) + "\n" + "".join(
            f"{t - start:9.3f} {line}\n" for t, line in lines))
    row["wall_s"], row["stopped"] = wall, stopped
    if p.returncode != 0 and not stopped:
        tail = " / ".join(line.strip() for _, line in lines[-5:])[-300:]
        row["error"] = f"exit {p.returncode}: {tail}"
        return row
    points = progress_points(lines, fw.pattern)
    try:
        row["states_s"], row["timed_states"], row["timed_s"] = states_per_second(points, work.warmup + work.skip)
    except ValueError as e:
        row["error"] = str(e)
        return row
    window = [t for t, s in points if s >= work.warmup + work.skip]
    c0, c1 = cpu.get(window[0]), cpu.get(window[-1])
    if c0 is not None and c1 is not None and c1 > c0:
        row["cpu_s"] = c1 - c0  # the CPU time the run got over the window: its share of a shared machine
    return row


def machine() -> str:
    cpu = ""
    info = Path("/proc/cpuinfo")
    if info.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                    if line.startswith("model name")), "")
    return f"{cpu or platform.processor()}, {os.cpu_count()} cores, {platform.system()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK.states:,} states (full: {FULL.states:,})")
    parser.add_argument("--only", default=",".join(FRAMEWORKS), help="comma-separated: " + ",".join(FRAMEWORKS))
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    parser.add_argument("--logs", type=Path, default=None, help="keep each run's timed output in this folder")
    parser.add_argument("--dqn-jax-root", type=Path, default=ROOT,
                        help="the checkout whose dqn_jax to run (default: this one)")
    parser.add_argument("--learner-devices", type=int, default=2,
                        help="dqn_jax's algorithm.learner_devices (default 2; dqn_jax_in_turn is 0)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per framework (default: 3 x states / 50 + 300)")
    args = parser.parse_args(argv)
    work = QUICK if args.quick else FULL
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in FRAMEWORKS]
    if unknown:
        parser.error(f"unknown framework(s) {', '.join(unknown)}; choose from {', '.join(FRAMEWORKS)}")
    timeout = args.timeout or 3 * work.states / 50 + 300
    print(f"{'quick' if args.quick else 'full'} mode on {machine()}: {work.states:,} states, warm-up "
          f"{work.warmup:,} (+{work.skip:,} untimed), memory {work.memory:,}, batch {work.batch}, a gradient step "
          f"per {work.train_every} states, target copy per {work.target_every:,} states, epsilon "
          f"{work.eps_start}->{work.eps_end} over the warm-up, {work.games} game", flush=True)
    rows = []
    for name in names:
        print(f"  {name} ...", end="", flush=True)
        row = run_one(name, work, timeout, args.logs, args.dqn_jax_root.resolve(), args.learner_devices)
        rows.append(row)
        got = f"{row['states_s']:.1f} states/s" if row.get("states_s") else f"did not run: {row.get('error')}"
        print(f" {got} ({row.get('wall_s', 0):.0f} s wall)", flush=True)
    print()
    print(table(rows))
    if args.markdown:
        print()
        print(table(rows, markdown=True))
    return 0 if all(r.get("states_s") for r in rows if r["name"] == "dqn_jax") else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Speed and size figures of the algorithmic core, measured side by side in one run.

    .venv/bin/python experiments/bench_core.py [--quick]

Prints one line per figure, with its target and PASS/FAIL where there is one:

1. the jitted backward sweep (both methods) against a plain per-state Python loop, at
   200,000 states (8 games x 25,000 steps, 4 actions); target >= 100x;
2. jitted update steps per second of the default hvass network at batch 128, and the
   samples per second of the in-JAX optimise loop;
3. replay-memory bytes per state for the default state; target within 5% of 16,800.

The measuring functions return dicts so another script can import and reuse them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dqn_jax.algorithms.hvass import optimise as L  # noqa: E402
from dqn_jax.algorithms.hvass import sampling  # noqa: E402
from dqn_jax.algorithms.hvass.targets import recompute_targets  # noqa: E402
from dqn_jax.config import NetworkConfig  # noqa: E402
from dqn_jax.core import replay  # noqa: E402
from dqn_jax.core.networks import make_network  # noqa: E402
from dqn_jax.core.schedules import ControlSignals  # noqa: E402
from dqn_jax.core.training import create_train_state, make_optimizer  # noqa: E402
from tests.programs import Compiles, compute_dtypes, count_params  # noqa: E402

STATE_SHAPE = (105, 80, 2)


def _random_sweep_memory(steps: int, games: int, actions: int, seed: int = 0) -> replay.ReplayMemory:
    # The sweep never reads the states, so a one-byte state keeps the benchmark's memory small.
    rng = np.random.default_rng(seed)
    memory = replay.init_memory(steps, games, (1,), jnp.uint8, actions)
    return memory.replace(
        q_values=jnp.asarray(rng.normal(size=(steps, games, actions)), jnp.float32),
        actions=jnp.asarray(rng.integers(0, actions, (steps, games)), jnp.int32),
        rewards=jnp.asarray(rng.choice([-1.0, 0.0, 0.0, 0.0, 1.0], (steps, games)), jnp.float32),
        end_life=jnp.asarray(rng.random((steps, games)) < 0.005),
        end_episode=jnp.asarray(rng.random((steps, games)) < 0.002),
        count=jnp.int32(steps),
    )


def python_sweep(q, actions, rewards, done, discount, rows: int | None = None):
    """The reference: the tutorial's rule one state at a time (numpy rows, Python loop)."""
    q = np.array(q)
    errors = np.zeros(q.shape[:2], np.float32)
    steps = q.shape[0] if rows is None else rows
    for game in range(q.shape[1]):
        for k in range(steps - 2, -1, -1):
            a = actions[k, game]
            target = rewards[k, game] if done[k, game] else rewards[k, game] + discount * q[k + 1, game].max()
            errors[k, game] = abs(target - q[k, game, a])
            q[k, game, a] = target
    return q, errors


def _best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_sweep(steps: int = 25_000, games: int = 8, actions: int = 4, python_rows: int = 25_000,
                repeats: int = 20) -> dict:
    """Seconds per sweep for the Python loop (timed on ``python_rows`` rows, extrapolated
    linearly when fewer than ``steps``) and for both jitted methods; and the speed-ups."""
    memory = _random_sweep_memory(steps, games, actions)
    host = jax.device_get(memory)
    done = host.end_life | host.end_episode
    rows = min(python_rows, steps)
    # Best of a few runs for the loop too, so both sides are timed the same way.
    python_s = _best_time(
        lambda: python_sweep(host.q_values[:rows], host.actions, host.rewards, done, 0.97),
        repeats=2 if rows == steps else 3,
    ) * (steps / rows)
    result = {"states": steps * games, "python_s": python_s, "python_rows": rows,
              "extrapolated": rows < steps}
    for method in ("scan", "associative"):
        swept = jax.tree_util.tree_map(jnp.copy, memory)  # the sweep donates its input
        start = time.perf_counter()
        swept, stats = recompute_targets(swept, 0.97, method)
        jax.block_until_ready(stats)
        result[f"{method}_compile_s"] = time.perf_counter() - start

        def run(method=method):
            nonlocal swept
            swept, stats = recompute_targets(swept, 0.97, method)  # sweeping again costs the same
            jax.block_until_ready((swept.q_values, stats))

        result[f"{method}_s"] = _best_time(run, repeats)
        result[f"{method}_speedup"] = python_s / result[f"{method}_s"]
    return result


def _hvass_learner(num_actions: int, batch_size: int, chunk: int = 256, loop: str = "auto",
                   dtype: str = "float32", network_cfg: NetworkConfig | None = None):
    network = make_network(network_cfg or NetworkConfig(dtype=dtype), num_actions)
    optimizer = make_optimizer()
    sample = jnp.zeros((1,) + STATE_SHAPE, jnp.uint8)
    state = jax.jit(create_train_state, static_argnums=(0, 3))(network, jax.random.key(0), sample, optimizer)
    learner = L.Learner(network, optimizer, batch_size, 0.1, 0.5, chunk=chunk, loop=loop)
    return network, state, learner


def bench_update(batch_size: int = 128, steps: int = 10, num_actions: int = 4, dtype: str = "float32") -> dict:
    """Jitted update steps per second of the default hvass network (compile excluded)."""
    network, state, learner = _hvass_learner(num_actions, batch_size, dtype=dtype)
    rng = np.random.default_rng(0)
    states = jnp.asarray(rng.integers(0, 256, (batch_size,) + STATE_SHAPE), jnp.uint8)
    targets = jnp.asarray(rng.normal(size=(batch_size, num_actions)), jnp.float32)
    update, rate = jax.jit(learner.step, donate_argnums=0), jnp.float32(1e-4)
    start = time.perf_counter()
    state, loss = update(state, states, targets, rate)
    loss.block_until_ready()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state, loss = update(state, states, targets, rate)
    jax.block_until_ready((state.params, loss))
    seconds = time.perf_counter() - start
    return {"params": count_params(state.params), "compile_s": compile_s,
            "steps_per_s": steps / seconds, "samples_per_s": steps * batch_size / seconds}


def bench_optimise(batch_size: int = 128, iterations: int = 10, games: int = 8, rows: int = 250,
                   num_actions: int = 4, loop: str = "auto", dtype: str = "float32",
                   network_cfg: NetworkConfig | None = None) -> dict:
    """Samples per second of the optimise loop (sampling, gathering and updates in JAX).

    ``loop`` as in :class:`dqn_jax.algorithms.hvass.optimise.Learner`: "auto" picks "host" on a CPU. The
    network is the tutorial's in ``dtype`` unless ``network_cfg`` names another."""
    _, state, learner = _hvass_learner(num_actions, batch_size, chunk=max(1, iterations), loop=loop,
                                       dtype=dtype, network_cfg=network_cfg)
    rng = np.random.default_rng(1)
    memory = replay.init_memory(rows, games, STATE_SHAPE, jnp.uint8, num_actions)
    memory = memory.replace(
        states=jnp.asarray(rng.integers(0, 256, memory.states.shape), jnp.uint8),
        q_values=jnp.asarray(rng.normal(size=memory.q_values.shape), jnp.float32),
        errors=jnp.asarray(rng.exponential(0.1, memory.errors.shape), jnp.float32),
        count=jnp.int32(rows),
    )
    per_epoch = rows * games / batch_size

    def optimise(iters, key):
        epochs = (iters + 0.5) / per_epoch
        return learner.optimise(state, memory, key, learning_rate=1e-4, loss_limit=0.0,
                                max_epochs=epochs, min_epochs=epochs)

    start = time.perf_counter()
    state, key, _ = optimise(1, jax.random.key(0))  # compiles the chunk
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    state, key, res = optimise(iterations, key)
    jax.block_until_ready(state.params)
    seconds = time.perf_counter() - start
    return {"iterations": res.iterations, "compile_s": compile_s, "loop": learner.loop,
            "samples_per_s": res.iterations * batch_size / seconds,
            "steps_per_s": res.iterations / seconds}


def bench_dqn_update(cfg, steps: int = 200) -> dict:
    """Milliseconds per DQN gradient step (sample, targets, loss, RMSProp, target copy) of
    the composed config ``cfg`` (its network, optimiser, batch and memory size, its real
    games' state), the memory filled with random uint8 states."""
    from dqn_jax import algorithms
    from dqn_jax.algorithms import dqn
    from dqn_jax.config import num_envs
    from dqn_jax.envs import make_games

    games = make_games(cfg.env, num_envs(cfg.env), cfg.seed)
    try:
        parts = algorithms.make_parts(cfg, games, cfg.seed)
        algorithm = algorithms.build(cfg, parts, games)
        spec = algorithms.memory_spec(cfg, games)
        rows, dtype = spec.rows, spec.dtype
        memory = replay.init_memory(rows, spec.games, spec.shape, dtype, spec.num_actions, circular=True,
                                    stack=spec.stack)
    finally:
        games.close()
    update = algorithm.update
    rng = np.random.default_rng(1)
    memory = memory.replace(states=jnp.asarray(rng.integers(0, 256, memory.states.shape, dtype=np.uint8), dtype),
                            count=jnp.int32(rows + 1))
    rate = jnp.float32(ControlSignals.from_config(cfg.schedule).learning_rate(0))
    state, stats, key = dqn.with_target(parts.train_state), dqn.Stats.zeros(), jax.random.key(2)
    with Compiles() as compiles:
        for _ in range(3):  # compiles once
            state, stats, memory, key = update(state, stats, memory, key, rate)
    jax.block_until_ready(state.params)
    start = time.perf_counter()
    for _ in range(steps):
        state, stats, memory, key = update(state, stats, memory, key, rate)
    jax.block_until_ready(state.params)
    seconds = (time.perf_counter() - start) / steps
    return {"step_ms": seconds * 1e3, "params": count_params(state.params), "compiles": compiles.of("_step"),
            "memory_bytes_per_state": memory.states.nbytes / (rows * spec.games)}


def bench_priority_draw(states: int, batch_size: int = 32, batches: int = 300) -> float:
    """Milliseconds per prioritised draw (:mod:`dqn_jax.core.priorities`: the priorities of
    ``states`` stored errors, their running sum, a stratified batch), what a prioritised
    DQN step adds to a uniform one; the errors random, a tenth of them unseen."""
    from dqn_jax.core import priorities

    rng = np.random.default_rng(3)
    errors = np.where(rng.random(states) < 0.1, priorities.UNSEEN, rng.exponential(0.5, states))
    errors, valid = jnp.asarray(errors.reshape(-1, 8), jnp.float32), jnp.ones((states // 8, 8), bool)
    draw = jax.jit(lambda key, e: priorities.draw(key, priorities.priorities(e, valid, 0.5), batch_size)[0])
    keys = jax.random.split(jax.random.key(4), batches)
    jax.block_until_ready(draw(keys[0], errors))
    start = time.perf_counter()
    out = [draw(key, errors) for key in keys]
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / batches * 1e3


def old_sample_indices(key, errors_flat, used_mask, threshold, min_high_share, batch_size: int):
    """The sampler before the per-cycle plan, kept here only as the benchmark's reference:
    a uniform number for every state of the memory and ``top_k`` over all of them, per batch."""
    high = used_mask & (errors_flat >= threshold)
    low = used_mask & (errors_flat < threshold)
    n_used = jnp.sum(used_mask, dtype=jnp.int32)
    hi_avail, lo_avail = jnp.sum(high, dtype=jnp.int32), jnp.sum(low, dtype=jnp.int32)
    n_hi = jnp.maximum((hi_avail * batch_size) // jnp.maximum(n_used, 1),
                       jnp.floor(min_high_share * batch_size).astype(jnp.int32))
    n_hi = jnp.clip(jnp.minimum(n_hi, batch_size), batch_size - lo_avail, hi_avail)
    n_lo = jnp.minimum(batch_size - n_hi, lo_avail)
    u = jax.random.uniform(key, errors_flat.shape)
    scores = jnp.stack([jnp.where(high, u, -1.0), jnp.where(low, u, -1.0)])
    _, top = jax.lax.top_k(scores, min(batch_size, errors_flat.shape[0]))
    pos = jnp.arange(batch_size) % jnp.maximum(n_hi + n_lo, 1)
    from_high = pos < n_hi
    return jnp.where(from_high, top[0, pos], top[1, jnp.clip(pos - n_hi, 0, batch_size - 1)])


def bench_sampler(states: int = 200_000, batch_size: int = 128, batches: int = 200, repeats: int = 5) -> dict:
    """Seconds per batch of the old sampler (O(memory) per batch) and of the new one
    (``prepare_sampling`` once per cycle, then ``sample_batch`` in O(batch)), each timed as
    ``batches`` draws inside one jitted loop so that dispatch does not count; and the
    one-off cost of preparing the plan."""
    rng = np.random.default_rng(2)
    errors = jnp.asarray(rng.exponential(0.1, states), jnp.float32)
    used = jnp.ones(states, bool)

    def looped(draw):
        @jax.jit
        def run(key, *args):
            def body(i, acc):
                return acc + jnp.sum(draw(jax.random.fold_in(key, i), *args))
            return jax.lax.fori_loop(0, batches, body, jnp.zeros((), jnp.int32))
        return run

    old = looped(lambda k, e, u: old_sample_indices(k, e, u, 0.1, 0.5, batch_size))
    new = looped(lambda k, plan: sampling.sample_batch(k, plan, batch_size))
    prepare = jax.jit(sampling.prepare_sampling, static_argnums=4)
    plan = prepare(errors, used, 0.1, 0.5, batch_size)
    key = jax.random.key(0)
    old(key, errors, used).block_until_ready()
    new(key, plan).block_until_ready()
    old_s = _best_time(lambda: old(key, errors, used).block_until_ready(), repeats) / batches
    new_s = _best_time(lambda: new(key, plan).block_until_ready(), repeats) / batches
    prepare_s = _best_time(lambda: jax.block_until_ready(prepare(errors, used, 0.1, 0.5, batch_size)), repeats)
    return {"states": states, "old_s": old_s, "new_s": new_s, "prepare_s": prepare_s,
            "speedup": old_s / new_s}


def bench_dtypes(batch_size: int = 128, steps: int = 3, rounds: int = 3, num_actions: int = 4) -> dict:
    """Update steps/s of the hvass network in float32 and bfloat16, alternating ``rounds``
    times (medians), and the element types the compiled program's products run in."""
    rates = {"float32": [], "bfloat16": []}
    for _ in range(rounds):
        for dtype in rates:
            rates[dtype].append(bench_update(batch_size, steps, num_actions, dtype)["steps_per_s"])
    network = make_network(NetworkConfig(dtype="bfloat16"), num_actions)
    x = jax.ShapeDtypeStruct((batch_size,) + STATE_SHAPE, jnp.uint8)
    params = jax.eval_shape(network.init, jax.random.key(0), x)
    lowered = jax.jit(network.apply).lower(params, x)
    out = {dtype: float(np.median(v)) for dtype, v in rates.items()}
    out["asked"] = sorted(set(compute_dtypes(lowered.as_text())))
    out["compiled"] = sorted(set(compute_dtypes(lowered.compile().as_text())))
    return out


def memory_bytes_per_state(state_shape=STATE_SHAPE, num_actions: int = 4, size: int = 200_000,
                           games: int = 8) -> dict:
    """Bytes the replay memory holds per state (shapes only; nothing is allocated)."""
    shapes = jax.eval_shape(lambda: replay.init_memory(size // games, games, state_shape, jnp.uint8, num_actions))
    total = sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(shapes))
    states = (size // games) * games
    return {"bytes_per_state": total / states, "total_gb": total / 1e9, "states": states}


def _line(name: str, value: str, target: str = "", ok: bool | None = None) -> None:
    verdict = "" if ok is None else ("PASS" if ok else "FAIL")
    print(f"{name:<38} {value:<34} {('target ' + target) if target else '':<24} {verdict}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps")
    args = parser.parse_args(argv)
    quick = args.quick
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.devices()[0].device_kind})")

    sweep = bench_sweep(python_rows=5_000 if quick else 25_000, repeats=10 if quick else 20)
    how = (f"timed on {sweep['python_rows'] * 8:,} states, extrapolated linearly"
           if sweep["extrapolated"] else "timed in full")
    _line(f"python sweep, {sweep['states']:,} states", f"{sweep['python_s']:.2f} s ({how})")
    ok_all = True
    for method in ("scan", "associative"):
        ok = sweep[f"{method}_speedup"] >= 100
        ok_all &= ok
        _line(f"jitted sweep ({method}) speed-up",
              f"{sweep[f'{method}_speedup']:.0f}x ({sweep[f'{method}_s'] * 1e3:.1f} ms)", ">= 100x", ok)

    update = bench_update(steps=3 if quick else 10)
    _line("hvass update, batch 128", f"{update['steps_per_s']:.2f} steps/s "
          f"({update['samples_per_s']:.0f} samples/s)")
    opt = bench_optimise(iterations=3 if quick else 10)
    _line(f"optimise loop ({opt['loop']}), batch 128", f"{opt['samples_per_s']:.0f} samples/s "
          f"({opt['steps_per_s']:.2f} steps/s)")
    if opt["loop"] == "host":
        # For comparison: the in-JAX while_loop, slow on CPU for conv gradients (jax #12868).
        dev = bench_optimise(iterations=2, loop="device")
        _line("optimise loop (device), batch 128", f"{dev['samples_per_s']:.0f} samples/s "
              f"({dev['steps_per_s']:.2f} steps/s)")

    size = memory_bytes_per_state()
    ok = abs(size["bytes_per_state"] / 16_800 - 1) <= 0.05
    ok_all &= ok
    _line("replay memory bytes per state", f"{size['bytes_per_state']:,.0f} B "
          f"({size['total_gb']:.2f} GB for {size['states']:,})", "within 5% of 16,800", ok)
    return 0 if ok_all else 1


if __name__ == "__main__":
    raise SystemExit(main())

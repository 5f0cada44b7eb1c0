"""Why SBX's DQN is slow on a CPU: its one gradient step, jitted alone vs inside lax.scan.

    .venv-peers/sbx/bin/python experiments/peers/sbx_scan_check.py

SBX's DQN.train wraps its update in jax.lax.scan over `gradient_steps` (1 here), called
from Python outside jit. This times SBX's own DQN.update_qnetwork on a batch of 32
84x84x4 states with the Nature CNN both ways, 10 steps after one to compile. On XLA:CPU
a convolution's gradient inside a loop body runs far slower than the same computation
at the top level (jax#12868).
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sbx.common.type_aliases import RLTrainState
from sbx.dqn.dqn import DQN
from sbx.dqn.policies import CnnQNetwork

BATCH = 32


def main() -> None:
    net = CnnQNetwork(n_actions=4, n_units=512)
    params = net.init({"params": jax.random.key(0)}, jnp.zeros((1, 4, 84, 84), jnp.uint8))
    state = RLTrainState.create(apply_fn=net.apply, params=params, target_params=params,
                                tx=optax.rmsprop(2.5e-4, decay=0.95, eps=1e-5, centered=True))
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 255, (BATCH, 4, 84, 84), dtype=np.uint8)
    actions = np.zeros((BATCH, 1), np.int64)
    zeros, discounts = np.zeros(BATCH, np.float32), np.full(BATCH, 0.99, np.float32)

    def direct(s):
        return DQN.update_qnetwork(s, obs, actions, obs, zeros, zeros, discounts)[0]

    @jax.jit
    def body(s, idx):
        return DQN.update_qnetwork(s, obs[idx], actions[idx], obs[idx], zeros[idx], zeros[idx],
                                   discounts[idx])[0], None

    def scanned(s):  # as DQN.train does it: lax.scan called from Python, one step
        return jax.lax.scan(body, s, jnp.arange(BATCH).reshape(1, BATCH))[0]

    for name, step in (("jitted alone", direct), ("inside lax.scan (SBX's DQN.train)", scanned)):
        s = step(state)
        jax.block_until_ready(s.params)
        start = time.perf_counter()
        for _ in range(10):
            s = step(s)
        jax.block_until_ready(s.params)
        print(f"{name}: {(time.perf_counter() - start) / 10 * 1e3:.1f} ms per gradient step", flush=True)


if __name__ == "__main__":
    main()

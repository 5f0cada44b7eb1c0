"""The tutorial's optimisation: epochs of error-split batches until the loss limit.

:class:`Learner` compiles its functions once, from static numbers and the network
module only (never a config object):

* :meth:`Learner.step`: one gradient step on a batch (pure; the loop's body);
* the optimise loop: the memory's error split prepared once per call
  (:func:`sampling.prepare_sampling`), then iterations of sample -> gather -> update, run
  in chunks inside ``lax.while_loop`` with the next chunk always queued, so the device
  never waits for the host (on a CPU, one jitted iteration per call instead; see
  :class:`Learner`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dqn_jax.algorithms.hvass import sampling
from dqn_jax.core import replay
from dqn_jax.core.training import TrainState, set_learning_rate


def q_loss(params, apply_fn: Callable, states, targets) -> jax.Array:
    """Squared error between predicted and target Q-rows, summed over actions, mean over the batch."""
    q = apply_fn(params, states)
    return jnp.mean(jnp.sum(jnp.square(q - targets), axis=-1))


class OptimiseResult(NamedTuple):
    iterations: int
    epochs: float  # iterations / iterations per epoch
    mean_loss: float  # mean of the last (at most loss_window) batch losses
    high_error_share: float  # share of used states with error >= the threshold
    max_iterations: int


def choose_loop(loop: str = "auto") -> str:
    """Where the optimise loop runs: "auto" is "host" on a CPU, "device" elsewhere (see Learner)."""
    if loop == "auto":
        return "host" if jax.default_backend() == "cpu" else "device"
    if loop not in ("device", "host"):
        raise ValueError(f"loop={loop!r}; choose auto, device or host")
    return loop


class Learner:
    """Jitted training functions for one network, optimiser and batch geometry.

    ``loop`` chooses where the optimise loop's iterations run:

    * ``"device"``: inside ``lax.while_loop`` in chunks of up to ``chunk`` iterations;
      the host reads three scalars per chunk while the next chunk runs (a chunk queued
      after the stop rule has fired runs no iteration); the right choice on a GPU or TPU;
    * ``"host"``: one jitted iteration per call from Python, syncing only once the
      loss-limit stop has become possible. XLA on CPU runs a convolution's gradient
      inside a loop body many times slower than at the top level (jax issue #12868),
      so for the CNNs this is the faster choice on a CPU;
    * ``"auto"`` (default): "host" on a CPU, "device" elsewhere.

    Both give the same iterations and results. Each jitted function compiles once
    however the learning rate, loss limit or epochs change.
    """

    def __init__(self, network: nn.Module, optimizer, batch_size: int, error_threshold: float,
                 min_high_share: float, loss_window: int = 100, chunk: int = 256, loop: str = "auto"):
        loop = choose_loop(loop)
        self.network = network
        self.optimizer = optimizer
        self.batch_size = int(batch_size)
        self.error_threshold = float(error_threshold)
        self.min_high_share = float(min_high_share)
        self.loss_window = int(loss_window)
        self.chunk = int(chunk)
        self.loop = loop
        self._chunk_jit = jax.jit(self._chunk, donate_argnums=0)
        self._step_jit = jax.jit(self._one_iteration, donate_argnums=0)
        self._plan_jit = jax.jit(self._plan)

    # ------------------------------------------------------------------ one update

    def step(self, train_state: TrainState, states, targets, learning_rate):
        """One optimiser step on a batch of states and their target Q-rows: (train_state, loss)."""
        opt_state = set_learning_rate(train_state.opt_state, learning_rate)
        loss, grads = jax.value_and_grad(q_loss)(train_state.params, self.network.apply, states, targets)
        updates, opt_state = self.optimizer.update(grads, opt_state, train_state.params)
        params = optax.apply_updates(train_state.params, updates)
        new_state = TrainState(params=params, opt_state=opt_state, updates=train_state.updates + 1)
        return new_state, loss

    # ------------------------------------------------------------- optimise loop
    # The loop state is (train_state, key, iterations done, ring of recent losses, done).

    def _mean_loss(self, i, ring):
        """Mean of the last min(i, loss_window) losses held in the ring."""
        filled = jnp.minimum(i, self.loss_window)
        valid = jnp.arange(self.loss_window) < filled
        return jnp.sum(jnp.where(valid, ring, 0.0)) / jnp.maximum(filled, 1)

    def _is_done(self, i, ring, loss_limit, min_iters, max_iters):
        converged = (i >= min_iters) & (self._mean_loss(i, ring) < loss_limit)
        return (i >= max_iters) | converged

    def _iteration(self, carry, memory, plan, learning_rate, limits):
        """Sample an error-split batch, take one update step, record the loss."""
        ts, key, i, ring, _ = carry
        key, sample_key = jax.random.split(key)
        idx = sampling.sample_batch(sample_key, plan, self.batch_size)
        states, targets = sampling.gather_batch(memory, idx)
        ts, loss = self.step(ts, states, targets, learning_rate)
        ring = ring.at[i % self.loss_window].set(loss)
        i = i + 1
        return ts, key, i, ring, self._is_done(i, ring, *limits)

    def _chunk(self, train_state, memory, plan, key, iteration, ring, learning_rate, loss_limit,
               min_iters, max_iters):
        limits = (loss_limit, min_iters, max_iters)
        stop_at = jnp.minimum(iteration + self.chunk, max_iters)

        def cond(carry):
            return (~carry[4]) & (carry[2] < stop_at)

        def body(carry):
            return self._iteration(carry, memory, plan, learning_rate, limits)

        carry = (train_state, key, iteration, ring, self._is_done(iteration, ring, *limits))
        carry = jax.lax.while_loop(cond, body, carry)
        return *carry, self._mean_loss(carry[2], carry[3])

    def _one_iteration(self, train_state, memory, plan, key, iteration, ring, learning_rate, loss_limit,
                       min_iters, max_iters):
        carry = (train_state, key, iteration, ring, jnp.zeros((), bool))
        carry = self._iteration(carry, memory, plan, learning_rate, (loss_limit, min_iters, max_iters))
        return *carry, self._mean_loss(carry[2], carry[3])

    def _plan(self, memory):
        """The cycle's error split, made once per optimise: each batch then costs O(batch)."""
        return sampling.prepare_sampling(memory.errors.reshape(-1), replay.used_rows_mask(memory).reshape(-1),
                                    self.error_threshold, self.min_high_share, self.batch_size)

    def iteration_limits(self, used_states: int, min_epochs: float, max_epochs: float):
        """(iterations per epoch, min iterations, max iterations) for a memory of ``used_states``."""
        per_epoch = used_states / self.batch_size
        min_iters = max(1, int(per_epoch * min_epochs))
        max_iters = max(min_iters, int(per_epoch * max_epochs))
        return per_epoch, min_iters, max_iters

    def optimise(self, train_state: TrainState, memory: replay.ReplayMemory, key, *, learning_rate,
                 loss_limit, max_epochs, min_epochs: float = 1.0,
                 progress: Callable[[int, int, float], None] | None = None,
                 stop: Callable[[], bool] | None = None):
        """Train on error-split batches from a swept memory until the loss limit or max epochs.

        Runs at least ``min_epochs`` and at most ``max_epochs`` epochs (one epoch = used
        states / batch size iterations). After the minimum it stops as soon as the mean
        of the last ``loss_window`` batch losses is below ``loss_limit``. ``progress`` is
        called every ``chunk`` iterations and at the end with (iterations done, max
        iterations, mean loss). ``stop()`` true ends the loop early (Ctrl-C): checked
        after every iteration on the host loop; on the device loop after every chunk,
        and the chunk queued behind it still runs.
        ``train_state`` is donated; the memory is only read.
        Returns (train_state, key, OptimiseResult).
        """
        plan = self._plan_jit(memory)
        available = jax.device_get(plan.available)  # (high, low): the one read before the loop
        used_states = int(available.sum())
        per_epoch, min_iters, max_iters = self.iteration_limits(used_states, min_epochs, max_epochs)
        if used_states == 0:
            return train_state, key, OptimiseResult(0, 0.0, float("nan"), 0.0, 0)
        f32, i32 = jnp.float32, jnp.int32
        carry = (train_state, key, jnp.zeros((), i32), jnp.zeros((self.loss_window,), f32))
        args = (jnp.asarray(learning_rate, f32), jnp.asarray(loss_limit, f32),
                jnp.asarray(min_iters, i32), jnp.asarray(max_iters, i32))
        run = self._run_device if self.loop == "device" else self._run_host
        carry, iterations, mean_loss = run((memory, plan), carry, args, min_iters, max_iters, progress,
                                           stop or (lambda: False))
        result = OptimiseResult(
            iterations=iterations,
            epochs=iterations / per_epoch,
            mean_loss=mean_loss,
            high_error_share=float(available[0]) / used_states,
            max_iterations=max_iters,
        )
        return carry[0], carry[1], result

    def _run_device(self, data, carry, args, min_iters, max_iters, progress, stop):
        # The next chunk is queued before this one's few scalars are read, so the device
        # never waits for the host; a chunk queued after the loop is done runs no iteration.
        out = self._chunk_jit(carry[0], *data, *carry[1:], *args)
        while True:
            done, iterations, mean_loss = jax.device_get((out[4], out[2], out[5]))
            out = self._chunk_jit(out[0], *data, *out[1:4], *args)
            if progress is not None:
                progress(int(iterations), max_iters, float(mean_loss))
            if done or stop():
                if not done:  # stopped: the queued chunk may have run more iterations
                    iterations, mean_loss = jax.device_get((out[2], out[5]))
                return tuple(out[:4]), int(iterations), float(mean_loss)

    def _run_host(self, data, carry, args, min_iters, max_iters, progress, stop):
        for i in range(1, max_iters + 1):
            *state, done, mean_loss = self._step_jit(carry[0], *data, *carry[1:], *args)
            carry = tuple(state[:4])
            # Before min_iters nothing can stop the loop, so steps are queued without a sync.
            finished = i == max_iters or (i >= min_iters and bool(done)) or stop()
            if progress is not None and (finished or i % self.chunk == 0):
                progress(i, max_iters, float(mean_loss))
            if finished:
                return carry, i, float(mean_loss)
        raise AssertionError("unreachable: max_iters >= 1")

"""Numerical faults: a run whose loss or Q-values stop being finite, or leave what the
rewards allow, ends at once.

A diverging run must not destroy its own past: once a loss, a swept Q-value or a
parameter is NaN or infinite, every later checkpoint would hold garbage and, after
``checkpoint.keep`` cycles, no good one would be left. The training loop checks each
learning cycle's results with :func:`check_cycle` before its checkpoint is saved and
raises :class:`Diverged`; the application ends the run FAILED with the cause in a tag
and one line for the user. The last good checkpoint stays the latest.

A run can also diverge and stay finite (a loss of 1e33 is a float32). With rewards
clipped to ±reward_clip, no discounted sum of them exceeds reward_clip / (1 − discount)
(33.3 for the tutorial's 1 and 0.97), so a Q-value or target ``faults.q_factor`` times
past that is as sure a sign as a NaN; and a cycle's loss ``faults.loss_growth`` times
its running level is one too (:class:`Limits`).
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass, field

FAILURE_TAG = "dqn_jax.failure"  # the MLflow tag holding why a run failed
LOSS = "batch loss"  # the name of a cycle's loss among the checked values
Q_NAME = "Q-value"  # checked values with this in their name are Q-values or targets


class Diverged(RuntimeError):
    """Training produced a non-finite value; the message is one line for the user."""


@functools.cache
def _all_finite():
    import jax  # here, not at the top: the command line imports this module before JAX
    import jax.numpy as jnp

    def all_finite(tree):
        leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)
                  if jnp.issubdtype(leaf.dtype, jnp.inexact)]
        return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)

    return jax.jit(all_finite)


def all_finite(tree) -> bool:
    """True when every floating-point leaf of ``tree`` is finite (one device reduction)."""
    return bool(_all_finite()(tree))


def first_non_finite(values: dict[str, float]) -> str | None:
    """The name of the first value that is NaN or infinite, else None."""
    return next((name for name, value in values.items() if not math.isfinite(value)), None)


@dataclass
class Limits:
    """How far a finite run may go: a bound on |Q| (None: none) and on the loss's growth over
    its running level (the median of the last ``window`` cycles' losses, at least ``floor``)."""

    q_bound: float | None = None
    loss_growth: float | None = None
    floor: float = 1.0
    window: int = 10
    after: int = 3
    losses: list[float] = field(default_factory=list)  # the last cycles' losses (not checkpointed)

    @classmethod
    def from_config(cls, cfg) -> Limits:
        faults, clip, discount = cfg.faults, cfg.memory.reward_clip, cfg.algorithm.discount
        q_bound = faults.q_bound
        if q_bound is None and faults.q_factor is not None and discount < 1:
            q_bound = faults.q_factor * clip / (1 - discount)
        return cls(q_bound, faults.loss_growth, clip ** 2, faults.loss_window, faults.loss_after)

    def breach(self, values: dict[str, float]) -> str | None:
        """What in ``values`` is past the limits, in words for the user; None if nothing."""
        if self.q_bound is not None:
            for name, value in values.items():
                if Q_NAME in name and abs(value) > self.q_bound:
                    return (f"{name} is {value:.4g}, past {self.q_bound:.4g}, the bound the clipped rewards "
                            "allow (faults.q_factor x memory.reward_clip / (1 - algorithm.discount))")
        loss = values.get(LOSS)
        if loss is not None and self.loss_growth is not None and len(self.losses) >= self.after:
            level = max(statistics.median(self.losses[-self.window:]), self.floor)
            if loss > self.loss_growth * level:
                return (f"{LOSS} is {loss:.4g}, {loss / level:.3g} times its running level {level:.4g} "
                        f"(faults.loss_growth {self.loss_growth:g})")
        return None

    def record(self, values: dict[str, float]) -> None:
        if values.get(LOSS) is not None:
            self.losses = [*self.losses[-(self.window - 1):], values[LOSS]] if self.window > 1 else [values[LOSS]]


def check_cycle(*, cycle: int, states: int, values: dict[str, float], signals: dict[str, float],
                params=None, limits: Limits | None = None) -> None:
    """Raise :class:`Diverged` if a value of this learning cycle (or ``params``) is not finite,
    or past ``limits``.

    ``values`` are the cycle's results by name (batch loss, swept Q statistics),
    ``signals`` the values of the control signals the algorithm uses (the learning rate;
    the tutorial's method also its loss limit), shown to the user.
    """
    bad = first_non_finite(values)
    if bad is None and params is not None and not all_finite(params):
        bad = "network parameters"
    shown = None
    if bad is not None:
        shown = f"{bad} is {values[bad]}" if bad in values else f"the {bad} are not finite"
    elif limits is not None:
        shown = limits.breach(values)
    if shown is None:
        if limits is not None:
            limits.record(values)
        return
    settings = ", ".join(f"{name.replace('_', ' ')} {signals[name]:.3g}" for name in ("learning_rate", "loss_limit")
                         if name in signals)
    tail = ("or a smaller memory.reward_clip" if bad is not None else
            "(a run you know to be healthy: a larger faults.q_factor or faults.loss_growth)")
    raise Diverged(
        f"training diverged in learning cycle {cycle} at {states} states: {shown} ({settings}); "
        f"no checkpoint was written after the last good one; try a smaller schedule.learning_rate "
        f"(start and end) {tail}")

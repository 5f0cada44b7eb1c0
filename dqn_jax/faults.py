"""Numerical faults: a run whose loss or Q-values stop being finite ends at once.

A diverging run must not destroy its own past: once a loss, a swept Q-value or a
parameter is NaN or infinite, every later checkpoint would hold garbage and, after
``checkpoint.keep`` cycles, no good one would be left. The training loop checks each
learning cycle's results with :func:`check_cycle` before its checkpoint is saved and
raises :class:`Diverged`; the application ends the run FAILED with the cause in a tag
and one line for the user. The last good checkpoint stays the latest.
"""

from __future__ import annotations

import functools
import math

FAILURE_TAG = "dqn_jax.failure"  # the MLflow tag holding why a run failed


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


def check_cycle(*, cycle: int, states: int, values: dict[str, float], signals: dict[str, float],
                params=None) -> None:
    """Raise :class:`Diverged` if a value of this learning cycle (or ``params``) is not finite.

    ``values`` are the cycle's results by name (batch loss, swept Q statistics),
    ``signals`` the values of the control signals the algorithm uses (the learning rate;
    the tutorial's method also its loss limit), shown to the user.
    """
    bad = first_non_finite(values)
    if bad is None and params is not None and not all_finite(params):
        bad = "network parameters"
    if bad is None:
        return
    shown = f"{bad} is {values[bad]}" if bad in values else f"the {bad} are not finite"
    settings = ", ".join(f"{name.replace('_', ' ')} {signals[name]:.3g}" for name in ("learning_rate", "loss_limit")
                         if name in signals)
    raise Diverged(
        f"training diverged in learning cycle {cycle} at {states} states: {shown} ({settings}); "
        "no checkpoint was written after the last good one; try a smaller "
        "schedule.learning_rate (start and end) or a smaller memory.reward_clip")

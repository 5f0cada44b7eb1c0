"""Linear control signals: values that move from a start to an end as training goes on.

Every signal is a function of ``count_states`` (states processed so far). It holds
``start`` for ``begin`` states (0 unless set), goes linearly to ``end`` over ``span``
states and then stays at ``end``.
The signals are plain Optax schedules, so they work on Python ints on the host and
on traced counts inside jitted code alike.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import optax


def linear_signal(start: float, end: float, span: float, begin: float = 0) -> optax.Schedule:
    """A schedule holding ``start`` for ``begin`` states, then going to ``end`` over ``span``
    states, then ``end``."""
    span = int(span)
    if span <= 0:
        # optax would warn and hold ``start``; a zero span means "already at the end".
        return optax.constant_schedule(float(end))
    return optax.linear_schedule(init_value=float(start), end_value=float(end), transition_steps=span,
                                 transition_begin=int(begin))


@dataclass(frozen=True)
class ControlSignals:
    """The five training signals and the fixed epsilon used when testing."""

    epsilon: optax.Schedule
    learning_rate: optax.Schedule
    loss_limit: optax.Schedule
    max_epochs: optax.Schedule
    replay_fraction: optax.Schedule
    epsilon_test: float

    @classmethod
    def from_config(cls, schedule_cfg) -> ControlSignals:
        """Build the signals from a ``config.ScheduleConfig`` (or anything shaped like it)."""
        signals = {
            name: linear_signal(sig.start, sig.end, sig.span, getattr(sig, "begin", 0))
            for name in SIGNAL_NAMES
            for sig in (getattr(schedule_cfg, name),)
        }
        return cls(epsilon_test=float(schedule_cfg.epsilon_test), **signals)

    def values(self, count_states: int) -> dict[str, float]:
        """Every signal's value at ``count_states``, as Python floats (for logging and the host)."""
        return {name: float(getattr(self, name)(count_states)) for name in SIGNAL_NAMES}


# The signals' names, in the order the tutorial lists them: ControlSignals' schedules.
SIGNAL_NAMES = tuple(f.name for f in fields(ControlSignals) if f.name != "epsilon_test")

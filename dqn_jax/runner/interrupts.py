"""Stop requests: Ctrl-C, SIGTERM and SIGHUP stop the run at the next safe point.

SIGTERM is how Slurm (time limit, ``scancel``, preemption), Kubernetes, systemd, Ray and
``timeout`` stop a job; SIGHUP comes when the terminal goes away. All three are handled
as Ctrl-C is, and so is submitit's time-limit signal (SIGUSR2) inside a submitit job,
where the run then asks submitit to requeue it (:attr:`StopRequest.requeue`).

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be,
and three places make that unsafe or unreliable: inside a checkpoint save (the save
is lost and Orbax logs the interrupted wait as an error), inside an XLA compilation
(the interpreter can then crash at exit), and inside a garbage-collector callback,
where CPython prints "Exception ignored" and drops the exception, so the run goes on
as if nothing was pressed. ``StopRequest`` handles the signals itself. The first only
records the request; the loops ask for it with :meth:`~StopRequest.check` at every
step and batch, where stopping is safe. A second signal, or the grace period running
out (SIGALRM, ``grace`` seconds after the first), raises at once and sets ``forced``,
except inside a :meth:`~StopRequest.deferred` section (a checkpoint save): there the
request waits for the next check, and a forced stop skips what is slow and optional
(pictures, artifact uploads) while closing the run.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_active: StopRequest | None = None  # the one handling the stop signals now, if any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
DEFAULT_GRACE_SECONDS = 25.0  # below Slurm's KillWait and Kubernetes' grace period (30 s)
STOP_TAG = "dqn_jax.stopped_by"  # the MLflow tag naming the signal that stopped a run


def _requeue_signal() -> int:
    """submitit's time-limit / preemption signal (USR2 unless $SUBMITIT_PREEMPT_SIGNAL says)."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return getattr(signal, f"SIG{name}", signal.SIGUSR2)


def signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "SIGINT"


class StopRequest:
    """The stop signals for the duration of a ``with`` block; outside the main thread it
    does nothing. ``at_once``: the first signal raises already (a command with nothing to
    save, such as ``python -m dqn_jax.analyze``)."""

    def __init__(self, hint: bool = True, grace: float | None = DEFAULT_GRACE_SECONDS, at_once: bool = False):
        self.requested = False
        self.forced = False  # a second signal, or the grace period ran out
        self.signum: int | None = None  # the first signal received
        self.requeue = None  # submitit's handler, to call once the run is saved (a requeue)
        self.hint, self.grace, self.at_once = hint, grace, at_once
        self._deferring = 0
        self._installed = False
        # What was in force before __enter__, put back by __exit__.
        self._previous: dict[int, object] = {}
        self._previous_active = self._previous_hook = None

    def _signals(self) -> tuple[int, ...]:
        requeue = _requeue_signal()
        previous = signal.getsignal(requeue)
        # a submitit job: its time-limit signal stops the run too, and submitit requeues it after
        from_submitit = getattr(getattr(previous, "__self__", None), "__module__", "").startswith("submitit")
        return (*STOP_SIGNALS, requeue, signal.SIGALRM) if from_submitit else (*STOP_SIGNALS, signal.SIGALRM)

    def __enter__(self) -> StopRequest:
        global _active
        if threading.current_thread() is threading.main_thread():
            for signum in self._signals():
                self._previous[signum] = signal.signal(signum, self._on_signal)
            self._previous_active, self._previous_hook = _active, sys.unraisablehook
            sys.unraisablehook = self._on_unraisable
            self._installed = True
            _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        if self._installed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            _active, sys.unraisablehook = self._previous_active, self._previous_hook
            self._installed = False

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGALRM and not self.requested:
            return  # not our timer
        if signum == _requeue_signal() and callable(self._previous.get(signum)):
            self.requeue = self._previous[signum]  # submitit's: it requeues the job once the run is saved
            if self.requested:
                return  # Slurm's preemption sends SIGTERM, then this: a requeue, not a second signal
        if not self.requested and signum != signal.SIGALRM:
            self.requested, self.signum = True, signum
            if self.grace and self._installed:
                signal.setitimer(signal.ITIMER_REAL, self.grace)
            if self.hint:  # a raw write: a signal handler must not re-enter a buffered stream
                os.write(2, self._hint_text(signum))
            if not self.at_once:
                return
        self.forced = True
        if not self._deferring:
            raise KeyboardInterrupt

    def _hint_text(self, signum: int) -> bytes:
        again = "press Ctrl-C again" if signum == signal.SIGINT else "a second signal"
        grace = f"; in {self.grace:g} s at the latest" if self.grace else ""
        what = "" if signum == signal.SIGINT else f"{signal_name(signum)}: "
        return f"\ndqn_jax: {what}stopping at the next safe point ({again} to stop at once{grace})\n".encode()

    def _on_unraisable(self, unraisable) -> None:
        # A forced KeyboardInterrupt that CPython dropped (raised in a gc callback): the
        # request stands and the next check acts on it, so no "Exception ignored".
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and self.requested:
            return
        self._previous_hook(unraisable)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A section that even a second signal does not cut: the request waits for :meth:`check`."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    def check(self) -> None:
        """Raise KeyboardInterrupt if a stop was requested (outside a deferred section)."""
        if self.requested and not self._deferring:
            raise KeyboardInterrupt

    @property
    def exit_status(self) -> int:
        """The shell's status for a command stopped by this signal: 128 + its number."""
        return 128 + (self.signum or signal.SIGINT)


@contextmanager
def stop_request() -> Iterator[StopRequest]:
    """The StopRequest in force (``python -m dqn_jax`` installs one first thing), or a
    new one for the duration of the block (training called from Python)."""
    if _active is not None:
        yield _active
    else:
        with StopRequest() as request:
            yield request


def active() -> StopRequest | None:
    """The StopRequest handling the signals now, if any."""
    return _active

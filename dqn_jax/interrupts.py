"""Ctrl-C: the first stops the run at the next safe point, a second stops it at once.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be,
and three places make that unsafe or unreliable: inside a checkpoint save (the save
is lost and Orbax logs the interrupted wait as an error), inside an XLA compilation
(the interpreter can then crash at exit), and inside a garbage-collector callback,
where CPython prints "Exception ignored" and drops the exception, so the run goes on
as if nothing was pressed. ``StopRequest`` handles SIGINT itself. The first Ctrl-C only
records the request; the loops ask for it with :meth:`~StopRequest.check` at every
step and batch, where stopping is safe. A second Ctrl-C raises at once, except inside
a :meth:`~StopRequest.deferred` section (a checkpoint save).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_active: StopRequest | None = None  # the one handling SIGINT now, if any

_HINT = b"\ndqn_jax: stopping at the next safe point (press Ctrl-C again to stop at once)\n"


class StopRequest:
    """SIGINT for the duration of a ``with`` block; outside the main thread it does nothing."""

    def __init__(self, hint: bool = True):
        self.requested = False
        self.hint = hint
        self._deferring = 0
        self._installed = False
        # What was in force before __enter__, put back by __exit__.
        self._previous_handler = self._previous_active = self._previous_hook = None

    def __enter__(self) -> StopRequest:
        global _active
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
            self._previous_active, self._previous_hook = _active, sys.unraisablehook
            sys.unraisablehook = self._on_unraisable
            self._installed = True
            _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        if self._installed:
            signal.signal(signal.SIGINT, self._previous_handler)
            _active, sys.unraisablehook = self._previous_active, self._previous_hook
            self._installed = False

    def _on_sigint(self, signum, frame) -> None:
        if not self.requested:
            self.requested = True
            if self.hint:  # a raw write: a signal handler must not re-enter a buffered stream
                os.write(2, _HINT)
        elif not self._deferring:
            raise KeyboardInterrupt

    def _on_unraisable(self, unraisable) -> None:
        # A forced KeyboardInterrupt that CPython dropped (raised in a gc callback): the
        # request stands and the next check acts on it, so no "Exception ignored".
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and self.requested:
            return
        self._previous_hook(unraisable)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A section that even a second Ctrl-C does not cut: the request waits for :meth:`check`."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed (outside a deferred section)."""
        if self.requested and not self._deferring:
            raise KeyboardInterrupt


@contextmanager
def stop_request() -> Iterator[StopRequest]:
    """The StopRequest in force (``python -m dqn_jax`` installs one first thing), or a
    new one for the duration of the block (training called from Python)."""
    if _active is not None:
        yield _active
    else:
        with StopRequest() as request:
            yield request

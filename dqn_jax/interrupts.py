"""Ctrl-C during training: stop at a safe point, never inside a checkpoint save.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be.
Two places make that unreliable for a training loop: inside a checkpoint save (Orbax
logs the interrupted wait as an error, with a traceback, and the save may be lost),
and inside a garbage-collector callback, where CPython prints "Exception ignored" and
drops the exception, so the run goes on as if nothing was pressed (at start-up, while
JAX compiles, this happens more often than not). ``StopRequest`` handles SIGINT
itself: it remembers the request, raises at once outside a
:meth:`~StopRequest.deferred` section, and :meth:`~StopRequest.check` raises a request
that was dropped or deferred at the next step of a loop.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_active: StopRequest | None = None  # the one handling SIGINT now, if any


class StopRequest:
    """SIGINT for the duration of a ``with`` block; outside the main thread it does nothing."""

    def __init__(self):
        self.requested = False
        self._deferring = 0
        self._previous = None
        self._installed = False

    def __enter__(self) -> StopRequest:
        global _active
        if threading.current_thread() is threading.main_thread():
            self._previous = (signal.signal(signal.SIGINT, self._on_sigint), _active, sys.unraisablehook)
            sys.unraisablehook = self._on_unraisable
            self._installed = True
            _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        if self._installed:
            signal.signal(signal.SIGINT, self._previous[0])
            _active, sys.unraisablehook = self._previous[1], self._previous[2]
            self._installed = False

    def _on_sigint(self, signum, frame) -> None:
        self.requested = True
        if not self._deferring:
            raise KeyboardInterrupt

    def _on_unraisable(self, unraisable) -> None:
        # Our KeyboardInterrupt, dropped by CPython (e.g. raised in a gc callback): the
        # request is remembered and acted on at the next check, so no "Exception ignored".
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and self.requested:
            return
        self._previous[2](unraisable)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A section that Ctrl-C does not cut: the request waits for :meth:`check`."""
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    def check(self) -> None:
        """Raise KeyboardInterrupt if Ctrl-C was pressed and not acted on yet."""
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

"""Ctrl-C: acted on at once, held back in a deferred section, never lost."""

from __future__ import annotations

import gc
import os
import signal
import sys
import time

import pytest

from dqn_jax import interrupts
from dqn_jax.interrupts import StopRequest, stop_request


def press_ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(100):  # the handler runs at the next bytecode boundary of the main thread
        time.sleep(0.001)


def test_ctrl_c_raises_at_once_and_is_remembered():
    with StopRequest() as request:
        with pytest.raises(KeyboardInterrupt):
            press_ctrl_c()
        assert request.requested
        with pytest.raises(KeyboardInterrupt):
            request.check()


def test_a_deferred_section_is_not_cut_and_the_request_waits():
    with StopRequest() as request:
        finished = False
        with request.deferred():
            press_ctrl_c()
            request.check()  # inside: nothing yet
            finished = True
        assert finished and request.requested
        with pytest.raises(KeyboardInterrupt):
            request.check()


def test_an_interrupt_python_drops_is_still_acted_on(monkeypatch):
    """CPython drops an exception raised in a gc callback ("Exception ignored in ...")."""
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)  # what would be printed

    def press_during_collection(phase, info):
        if phase == "start":
            press_ctrl_c()

    with StopRequest() as request:
        gc.callbacks.append(press_during_collection)
        try:
            gc.collect()  # the KeyboardInterrupt raised in the callback is dropped
        finally:
            gc.callbacks.remove(press_during_collection)
        assert request.requested
        with pytest.raises(KeyboardInterrupt):
            request.check()
    assert reported == []  # not reported as "Exception ignored": it was not ignored


def test_handlers_are_restored_and_the_active_request_is_shared():
    before_handler, before_hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    with StopRequest() as outer:
        assert signal.getsignal(signal.SIGINT) == outer._on_sigint
        with stop_request() as inner:
            assert inner is outer  # training reuses the one python -m dqn_jax installed
    assert signal.getsignal(signal.SIGINT) == before_handler and sys.unraisablehook is before_hook
    assert interrupts._active is None
    with stop_request() as own:  # none active: a new one for the block
        assert interrupts._active is own
    assert interrupts._active is None

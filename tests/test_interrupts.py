"""Ctrl-C: the first is acted on at the next check, a second at once, none is lost."""

from __future__ import annotations

import gc
import os
import signal
import sys
import time

import pytest

from dqn_jax.runner import interrupts
from dqn_jax.runner.interrupts import StopRequest, stop_request


def press_ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(100):  # the handler runs at the next bytecode boundary of the main thread
        time.sleep(0.001)


def test_the_first_ctrl_c_waits_for_a_check_and_a_second_stops_at_once(capfd):
    with StopRequest() as request:
        press_ctrl_c()  # no exception here: wherever the main thread was, it goes on
        assert request.requested
        assert "press Ctrl-C again to stop at once" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            request.check()
        with pytest.raises(KeyboardInterrupt):
            press_ctrl_c()


def test_a_deferred_section_is_not_cut_even_by_a_second_ctrl_c():
    with StopRequest(hint=False) as request:
        finished = False
        with request.deferred():
            press_ctrl_c()
            press_ctrl_c()
            request.check()  # inside: nothing yet
            finished = True
        assert finished and request.requested
        with pytest.raises(KeyboardInterrupt):
            request.check()


def test_a_forced_interrupt_python_drops_is_still_acted_on(monkeypatch):
    """CPython drops an exception raised in a gc callback ("Exception ignored in ...")."""
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)  # what would be printed

    def press_during_collection(phase, info):
        if phase == "start":
            press_ctrl_c()

    with StopRequest(hint=False) as request:
        press_ctrl_c()  # the first: recorded
        gc.callbacks.append(press_during_collection)
        try:
            gc.collect()  # the second raises inside the callback, and CPython drops it
        finally:
            gc.callbacks.remove(press_during_collection)
        with pytest.raises(KeyboardInterrupt):
            request.check()
    assert reported == []  # not reported as "Exception ignored": it was not ignored


def test_handlers_are_restored_and_the_active_request_is_shared():
    before_handler, before_hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    before_term = signal.getsignal(signal.SIGTERM)
    with StopRequest() as outer:
        assert signal.getsignal(signal.SIGINT) == outer._on_signal
        assert signal.getsignal(signal.SIGTERM) == outer._on_signal
        with stop_request() as inner:
            assert inner is outer  # training reuses the one python -m dqn_jax installed
    assert signal.getsignal(signal.SIGINT) == before_handler and sys.unraisablehook is before_hook
    assert signal.getsignal(signal.SIGTERM) == before_term
    assert interrupts._active is None
    with stop_request() as own:  # none active: a new one for the block
        assert interrupts._active is own
    assert interrupts._active is None


def send(signum: int) -> None:
    os.kill(os.getpid(), signum)
    for _ in range(100):
        time.sleep(0.001)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_are_stop_requests_with_their_exit_status(capfd, signum, status):
    with StopRequest(grace=None) as request:
        send(signum)  # recorded, not raised
        assert request.requested and request.signum == signum and not request.forced
        assert request.exit_status == status and interrupts.signal_name(request.signum) == signal.Signals(signum).name
        assert f"{signal.Signals(signum).name}: stopping at the next safe point" in capfd.readouterr().err
        with pytest.raises(KeyboardInterrupt):
            send(signal.SIGTERM)  # a second signal, whichever: at once
        assert request.forced


def test_the_grace_period_running_out_stops_at_once_but_never_inside_a_deferred_section():
    with StopRequest(hint=False, grace=0.2) as request, request.deferred():
        send(signal.SIGTERM)
        time.sleep(0.4)  # past the grace period: noted, not raised here
        assert request.forced
    with StopRequest(hint=False, grace=0.2) as request:
        send(signal.SIGTERM)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            while time.monotonic() - started < 5:  # a loop that never checks
                time.sleep(0.01)
        assert request.forced and time.monotonic() - started < 1.0
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no timer left behind

"""A Ctrl-C that a C extension swallowed is raised again by the coordinator's poll (launch/run/stop_request.py)."""

from __future__ import annotations

import signal
import sys

import pytest
from auglocal.launch.run import stop_request


class _SwallowsExceptions:
    """Like pyzmq's Frame: an exception raised while it is freed is printed and dropped."""

    def __del__(self):
        stop_request.on_signal(signal.SIGINT, None)


def test_a_swallowed_interrupt_is_raised_at_the_next_check(monkeypatch):
    stop_request.handled()
    stop_request.raise_if_lost()                     # nothing asked: nothing raised
    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: dropped.append(info.exc_type))
    obj = _SwallowsExceptions()
    del obj                                          # the KeyboardInterrupt is lost here, as in Frame.__dealloc__
    assert dropped == [KeyboardInterrupt]
    with pytest.raises(KeyboardInterrupt) as raised:
        stop_request.raise_if_lost()
    assert not isinstance(raised.value, stop_request.Terminated)
    stop_request.raise_if_lost()                     # raised once, not again


def test_sigterm_is_terminated_and_a_handled_stop_is_not_raised_again():
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(stop_request.Terminated):
            stop_request.on_signal(signal.SIGTERM, None)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN     # a second SIGTERM waits for the clean stop
        stop_request.handled()
        stop_request.raise_if_lost()
    finally:
        signal.signal(signal.SIGTERM, previous)

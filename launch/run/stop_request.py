"""A stop asked by signal (Ctrl-C, SIGTERM) that the run cannot lose.

Python raises a signal handler's exception wherever the main thread is at that moment. When that is inside a C
extension's deallocator (pyzmq's `Frame.__dealloc__` checks for signals while it frees a message), Python prints
"Exception ignored" and drops the exception: the run went on and ended with exit 0 after Ctrl-C. So the handler
also records the request, and the coordinator's poll loop raises a lost one again (`raise_if_lost`).
"""

from __future__ import annotations

import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that the run stops as on Ctrl-C: workers stopped, files whole."""


#: the stop asked and not yet raised where it could be handled, if any
_requested: type[KeyboardInterrupt] | None = None


def on_signal(signum, frame) -> None:
    """The handler of SIGINT and SIGTERM in the launcher's main thread."""
    global _requested
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)     # one is enough: let the clean stop finish
    _requested = Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    raise _requested()


def raise_if_lost() -> None:
    """Raise the asked stop again if nobody handled it yet (where an exception is always seen)."""
    global _requested
    if _requested is not None:
        asked, _requested = _requested, None
        raise asked()


def handled() -> None:
    """The stop reached its handler: nothing to raise again."""
    global _requested
    _requested = None

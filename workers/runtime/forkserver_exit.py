"""The forkserver leaves at once when its launcher is gone, instead of tearing its interpreter down.

The one-host launcher's forkserver has imported torch, torch._dynamo and the stage (its preload), and holds
the launcher's stdout and stderr, which it passed on to every worker. When the launcher exits, the forkserver
sees its alive pipe close and raises SystemExit; tearing down an interpreter that imported torch then took
about a second, during which the launcher's output stayed open: `auglocal-launch ... | tee`, a test that
captures the output, any caller that waits for end of file, waited for the forkserver, not for the run.
It has nothing of its own to write or remove at that point (workers are forked children that leave through
os._exit, and the launcher removes the socket folder), so once the interpreter's exit handlers have run, a
last handler flushes the standard streams and ends the process with os._exit.
"""

from __future__ import annotations

import atexit
import os
import sys

_installed = False


def _in_forkserver_preload() -> bool:
    """True while multiprocessing.forkserver.main imports its preload modules (this module is one of them)."""
    frame = sys._getframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name == "main" and code.co_filename.replace("\\", "/").endswith("multiprocessing/forkserver.py"):
            return True
        frame = frame.f_back
    return False


def _leave() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(0)


def install() -> bool:
    """Register the quick exit, in the forkserver's preload only (every other process exits as before)."""
    global _installed
    if _installed or not _in_forkserver_preload():
        return False
    _installed = True
    # registered after multiprocessing.util's own exit handler, so it runs before it: that one has nothing to do
    # in a forkserver (its workers are no Process objects of it), and the exit code stays 0 either way
    atexit.register(_leave)
    return True

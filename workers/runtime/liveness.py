"""Never an orphan: a worker notices when its coordinator is gone, even when that process is a zombie."""

from __future__ import annotations

from collections.abc import Callable

import psutil


def coordinator_watch(pid: int) -> Callable[[], bool]:
    """A check that the coordinator `pid` still runs. A dead coordinator stays a zombie until its parent reaps
    it (a parent that may itself wait for our output to end): a zombie, or a new process that reused its pid
    (psutil keeps the start time), counts as gone."""
    process = psutil.Process(pid)

    def alive() -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    return alive


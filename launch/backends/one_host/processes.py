"""Where one host's workers come from: a forkserver that has imported torch once, and the handle of a started
worker process (or thread host) that the coordinator watches, stops and reaps.
"""

from __future__ import annotations

import multiprocessing as mp

import psutil
from auglocal.workers.runtime.entry import worker_main
from auglocal.workers.runtime.worker import WorkerSpec


def forkserver_context() -> mp.context.BaseContext:
    """Workers start from a forkserver that has imported torch once: a fresh import costs seconds each.

    torch._dynamo too: torch imports it lazily the first time an optimizer is built (`Optimizer.__init__` is
    wrapped to keep dynamo out), which cost every new worker about 2.5 s of its 2.9 s start on this 2-core
    machine; preloaded, the forkserver pays it once per launch and a worker (or a one-worker recovery's
    replacement) is ready in a fraction of a second."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "auglocal.engine.stage", "auglocal.engine.auxnets",
                                "auglocal.engine.models", "auglocal.workers.runtime.entry",
                                "auglocal.workers.runtime.host", "auglocal.workers.runtime.spare"])
    return ctx


def start_forkserver() -> None:
    """Start the forkserver now, so that its imports (several seconds: torch, torch._dynamo, the stage) run while
    the launcher plans the run, instead of after it, when the first worker is asked for."""
    from multiprocessing import forkserver

    forkserver_context()
    forkserver.ensure_running()


class WorkerProcess:
    """A worker process started from the forkserver, watched by its pid as well; with `hosted`, a host
    process running those workers as threads (workers/runtime/host.py), which then stands for each of them.

    If the forkserver dies, multiprocessing reports its children as exited (code 255) although they run on,
    reparented to init: `orphaned` tells that case apart and `stop` ends them through their pid."""

    def __init__(self, spec: WorkerSpec, ctx: mp.context.BaseContext | None = None,
                 hosted: list[WorkerSpec] | None = None, started: mp.process.BaseProcess | None = None):
        if started is not None:             # a warm spare that became this worker (launch/backends/one_host/spares.py)
            self.process = started
        elif hosted:
            from auglocal.workers.runtime.host import host_main

            self.process = ctx.Process(target=host_main, args=(hosted,), daemon=True,
                                       name=f"host-{hosted[0].name}-{hosted[-1].name}")
        else:
            self.process = ctx.Process(target=worker_main, args=(spec,), name=spec.name, daemon=True)
        if started is None:
            self.process.start()
        self._ps = psutil.Process(self.process.pid)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def orphaned(self) -> bool:
        try:
            return self._ps.is_running() and self._ps.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(timeout=10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=5)
        if self.orphaned():
            try:
                self._ps.terminate()
                self._ps.wait(timeout=10)
            except psutil.TimeoutExpired:
                self._ps.kill()
            except psutil.NoSuchProcess:
                pass

    def join(self, timeout: float) -> None:
        self.process.join(timeout=timeout)

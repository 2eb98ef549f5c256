"""Warm spares: worker processes started with the run, so that a one-worker recovery need not wait for a new one.

A spare (workers/runtime/spare.py) comes from the same forkserver as the workers, sets its process up and builds
the run's network, then waits on a pipe for the spec of the worker it replaces. The pool is the coordinator's
side: `fill` starts spares up to `count` (after the workers are ready, and again once a recovery has caught
up, so a new spare never competes with the work it would speed up); `launch` hands a failed worker's spec to
a waiting spare, or starts a cold worker process when none is left; `close` ends the spares still waiting.
A spare is no worker of the run until `launch` makes it one: it has no rank, pid entry or report before that.
"""

from __future__ import annotations

import multiprocessing as mp

from auglocal.launch.backends.one_host.processes import WorkerProcess
from auglocal.workers.runtime.spare import spare_main
from auglocal.workers.runtime.worker import WorkerSpec

STOP_TIMEOUT_S = 5.0


class Spare:
    """One waiting spare process and the sending end of its pipe."""

    def __init__(self, ctx: mp.context.BaseContext, template: WorkerSpec, device: str = "cpu"):
        reader, self.conn = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=spare_main, name="spare", daemon=True,
                                   args=(reader, template.config, template.data_stats, template.threads,
                                         template.malloc, template.coordinator_pid, device))
        try:
            self.process.start()
        finally:
            reader.close()      # the spare holds its own end: once it is gone, a send fails instead of blocking

    def assign(self, spec: WorkerSpec) -> WorkerProcess | None:
        """Make this spare the worker of `spec`; None when it is gone (a cold start must replace it)."""
        if not self.process.is_alive():
            return None
        try:
            self.conn.send(spec)
        except (BrokenPipeError, OSError):
            return None
        finally:
            self.conn.close()
        return WorkerProcess(spec, started=self.process)

    def stop(self) -> None:
        self.conn.close()
        self.process.terminate()
        self.process.join(timeout=STOP_TIMEOUT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=STOP_TIMEOUT_S)


class SparePool:
    """Up to `count` warm spares of one host; `launch` is the recovery's way to start a replacement worker."""

    def __init__(self, ctx: mp.context.BaseContext, count: int):
        self.ctx, self.count = ctx, count
        self.template: WorkerSpec | None = None
        self.device = "cpu"      # where spares set up: the workers' GPU when they all share one, else the CPU
        self.waiting: list[Spare] = []
        self.used = 0            # spares that became workers
        self.cold = 0            # replacements started cold (no spare was waiting)

    def fill(self, specs: list[WorkerSpec] | None = None) -> None:
        """Start spares until `count` wait, with the run settings of the workers' `specs` (the first call must
        give them). A spare holds a CUDA context only where every worker's GPU is the same: one on another GPU
        would cost that GPU's memory for nothing."""
        if specs:
            self.template = specs[0]
            devices = {s.device for s in specs}
            self.device = devices.pop() if len(devices) == 1 else "cpu"
        self.waiting = [s for s in self.waiting if s.process.is_alive()]
        while self.template is not None and len(self.waiting) < self.count:
            self.waiting.append(Spare(self.ctx, self.template, self.device))

    def launch(self, spec: WorkerSpec) -> WorkerProcess:
        while self.waiting:
            handle = self.waiting.pop(0).assign(spec)
            if handle is not None:
                self.used += 1
                return handle
        self.cold += 1
        return WorkerProcess(spec, self.ctx)

    def close(self) -> None:
        for spare in self.waiting:
            spare.stop()
        self.waiting.clear()

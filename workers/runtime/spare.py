"""A warm spare: a worker process that is ready before any worker fails, so a one-worker recovery does not wait
for a new process to get ready.

The one-host launcher starts it from its forkserver with the run (launch/backends/one_host/spares.py). It sets
its process up, builds the run's whole network (every local module, from the run's config and seed: the same
initial weights a new worker would build) and waits on a pipe. When a worker dies, the coordinator sends it the
dead worker's spec (rank, links, checkpoint to load); the spare keeps the modules of that rank as its stage and
goes on as that worker (`worker_main`): load the layer files, bind the new links, report ready, replay. What it
does is what a new worker would do, in the same order on the same values, so the results are bitwise those of
a cold restart; only the time to get there differs.

It never trains or reports before it is assigned, so it is not one of the run's workers, and it leaves when
its coordinator is gone or closes the pipe (the end of the attempt).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from auglocal.workers.runtime.entry import worker_main
from auglocal.workers.runtime.liveness import coordinator_watch
from auglocal.workers.runtime.process_setup import set_up_process
from auglocal.workers.runtime.spec import WorkerSpec, build_modules, build_stage

WATCH_S = 0.5   # how often a waiting spare checks that its coordinator still runs


def wait_for_spec(conn, alive: Callable[[], bool], watch_s: float = WATCH_S) -> WorkerSpec | None:
    """The spec the coordinator assigns this spare, or None once the coordinator is gone or hung up."""
    while True:
        try:
            if conn.poll(watch_s):
                spec = conn.recv()
                return spec if isinstance(spec, WorkerSpec) else None
        except (EOFError, OSError):
            return None
        if not alive():
            return None


class Prebuilt:
    """The run's local modules, built while the spare waits; used for the first spec of the same run only."""

    def __init__(self, config: dict, data_stats: dict):
        self.config, self.data_stats = config, data_stats
        self.modules = build_modules(config, data_stats)

    def stage_for(self, spec: WorkerSpec):
        """The stage `spec` asks for: from the modules built already when it describes the same network, else
        built anew (a spec of another config never gets modules built from this one)."""
        same = spec.config == self.config and spec.data_stats == self.data_stats
        return build_stage(spec, self.modules if same else None)


def spare_main(conn, config: dict, data_stats: dict, threads: int, malloc: str, coordinator_pid: int,
               device: str = "cpu") -> None:
    """Process entry point of a spare: set up, prebuild, wait for a spec, then serve as that worker. With a CUDA
    `device` (every worker of the host on that GPU) it creates its CUDA context there now: a second or more
    that a replacement would otherwise spend first."""
    set_up_process(threads, malloc, device)
    if device.startswith("cuda"):
        import torch

        torch.zeros(1, device=device)
    prebuilt = Prebuilt(config, data_stats)
    spec = wait_for_spec(conn, coordinator_watch(coordinator_pid))
    conn.close()
    if spec is None:
        os._exit(0)
    worker_main(spec, prebuilt.stage_for(spec))

"""The worker process's entry point: set the process up, open its links, run the loop, and report a crash.

`worker_main` is what the one-host launcher starts (from its forkserver); `serve` is the loop with its crash
report, shared with the thread host and the elastic worker ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from auglocal.workers.runtime import forkserver_exit
from auglocal.workers.runtime.liveness import coordinator_watch
from auglocal.workers.runtime.process_setup import set_up_process
from auglocal.workers.runtime.spec import POLL_MS, CoordinatorGone, WorkerError, WorkerSpec
from auglocal.workers.runtime.worker import Worker
from auglocal.workers.runtime.worker_links import WorkerLinks, open_links
from auglocal.workers.wire.messages import Codec, Kind, Message
from auglocal.workers.wire.protocol import ErrorMeta

forkserver_exit.install()     # a no-op except in the one-host launcher's forkserver, which preloads this module


def report_crash(links: WorkerLinks, name: str, err: BaseException) -> None:
    """Tell the coordinator why this worker stops on an unexpected exception (with where it was raised)."""
    import traceback

    where = "".join(traceback.format_exception(err)[-3:])
    try:
        links.results.send(Message(Kind.ERROR, name, meta=ErrorMeta(f"{name} raised {where}"[:2000], True)),
                           POLL_MS)
    except (TimeoutError, ValueError):
        pass


def flush_reports(links: WorkerLinks) -> None:
    """Wait (briefly) until the coordinator has read our reports: it must read why we stop before we exit."""
    try:
        links.results.wait_all(POLL_MS)
    except TimeoutError:
        pass


def worker_main(spec: WorkerSpec, stage=None) -> None:
    """Process entry point: the one process set-up (workers/runtime/process_setup.py: signals, allocator, threads,
    determinism, the worker's GPU), then open the links and serve; `stage`: one a warm spare built already."""
    set_up_process(spec.threads, spec.malloc, spec.device)
    codec = Codec(spec.run_id, spec.secret)
    try:
        links = open_links(spec, codec)
    except ValueError:
        ipc = spec.inbox.address.startswith("ipc://")
        if ipc and not os.path.isdir(os.path.dirname(spec.inbox.address.removeprefix("ipc://"))):
            os._exit(0)      # the attempt ended while this worker started (its socket folder is gone): nothing to do
        raise
    serve(spec, links, coordinator_watch(spec.coordinator_pid), stage)


def serve(spec: WorkerSpec, links: WorkerLinks, coordinator_alive: Callable[[], bool], stage=None) -> bool:
    """Run a worker on opened links until it stops; False when its coordinator went away first. A worker that
    cannot go on exits with code 3 once the coordinator has read why."""
    worker = None
    try:
        worker = Worker(spec, links, stage, coordinator_alive=coordinator_alive)
        worker.run()
        return True
    except CoordinatorGone:
        return False
    except Exception as err:     # WorkerError was reported by _fail; anything else is a bug: report it first
        if not isinstance(err, WorkerError):
            report_crash(links, spec.name, err)
        flush_reports(links)
        os._exit(3)
    finally:
        links.close()
        if worker is not None and worker.log is not None:
            worker.log.close()

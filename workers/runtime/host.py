"""A host process: several pipeline workers, each in its own thread, passing activations by reference.

Why threads: a worker process per local layer duplicates the interpreter, torch and the allocator's heap per
layer (ResNet-110 `--workers layer` is 55 processes) and serialises every activation between neighbours that
could share memory. In a host process, consecutive workers are joined by `ThreadLink`s (workers/links/threadlink.py:
the same credit window and interface, tensors by reference); every other end stays ZeroMQ as for a process
worker: the first worker's inbox, the last one's outbox when its successor lives elsewhere, and each worker's
own results and control ends (so heartbeats, acknowledgements and errors stay per worker).

Compute runs in parallel: torch releases the GIL inside every kernel. `torch.set_num_threads` is per process,
so the host sets it once to its workers' intra-op threads (1 by default): K thread workers on K cores each
compute with one thread, as K single-threaded processes would. On a GPU each thread runs on its own CUDA
stream, so the kernels of different local layers may overlap on one device; the stream starts ordered after
the default stream the weights were written on (`streams.worker_stream`, checkable on CPU with the stream
double of tests/workers/stream_check.py).

Failure is all or nothing: a worker that raises (or stops on a bad message) reports the error on its own
results link, then ends the whole process with exit code 3, so the coordinator sees the attempt fail exactly
as for a dead worker process and the restart path resumes from the last committed checkpoint.
"""

from __future__ import annotations

import os
import threading

import torch
from auglocal.workers.links import streams
from auglocal.workers.links.threadlink import ThreadLink
from auglocal.workers.runtime.entry import flush_reports, report_crash
from auglocal.workers.runtime.process_setup import set_up_process
from auglocal.workers.runtime.worker import (
    CoordinatorGone,
    Worker,
    WorkerError,
    WorkerLinks,
    WorkerSpec,
    bind_control,
    bind_inbox,
    coordinator_watch,
    reopen_outbox,
)
from auglocal.workers.wire.messages import Codec

CRASH_EXIT = 3


def host_links(specs: list[WorkerSpec], codec: Codec) -> list[WorkerLinks]:
    """Each worker's ends: a ThreadLink where both sides live in this host, ZeroMQ (with the run's transport and
    CURVE keys) everywhere else."""
    inboxes: list = []
    for i, spec in enumerate(specs):
        fed_here = i > 0 and specs[i - 1].outbox == spec.inbox    # its upstream is a thread of this host
        inboxes.append(ThreadLink(codec, spec.name, spec.inbox.window) if fed_here else bind_inbox(spec, codec))
    links = []
    for i, spec in enumerate(specs):
        if i + 1 < len(specs) and spec.outbox == specs[i + 1].inbox:
            outbox = inboxes[i + 1].sender()
        else:
            outbox = spec.outbox.sender(codec, curve=spec.curve) if spec.outbox else None
        links.append(WorkerLinks(inboxes[i], outbox, spec.results.sender(codec, curve=spec.curve),
                                 bind_control(spec, codec),
                                 reopen_outbox(spec, codec)))
    return links


def check_consecutive(specs: list[WorkerSpec]) -> None:
    """A host holds a run of consecutive ranks: worker i's outbox is worker i+1's inbox, except where one
    replica's pipeline ends and the next one's begins (--replicas: launch/run/replicas.py)."""
    for a, b in zip(specs, specs[1:], strict=False):
        chain_end = a.outbox is None and b.is_first
        if b.rank != a.rank + 1 or (a.outbox != b.inbox and not chain_end):
            raise ValueError(f"a host process holds consecutive workers; got ranks {[s.rank for s in specs]}")


class _Thread(threading.Thread):
    """One worker's loop; on an exception it reports, then ends the host process (no half-dead pipeline)."""

    def __init__(self, worker: Worker):
        super().__init__(name=worker.spec.name, daemon=True)
        self.worker = worker

    def run(self) -> None:
        spec = self.worker.spec
        torch.set_num_threads(spec.threads)   # OpenMP's thread count is also a per-thread setting: set it here too
        try:
            device = torch.device(spec.device)
            if spec.device.startswith("cuda"):
                torch.cuda.set_device(device)
            with streams.worker_stream(device):   # its own stream, after the weights' writes (streams.py)
                self.worker.run()
        except CoordinatorGone:
            pass
        except BaseException as err:   # noqa: BLE001 - any failure of one worker ends the host: report it first
            crash(self.worker.links, spec.name, err)


def crash(links: WorkerLinks, name: str, err: BaseException) -> None:
    """Report `err` (a WorkerError was reported where it was raised), then end the whole host process."""
    if not isinstance(err, WorkerError):
        report_crash(links, name, err)
    flush_reports(links)
    os._exit(CRASH_EXIT)


def build_workers(specs: list[WorkerSpec], links: list[WorkerLinks]) -> list[Worker]:
    """Build the workers one after the other in this thread: building a stage seeds the process's global RNG
    (the initial weights), which threads building at once would interleave."""
    rng_lock = threading.Lock()
    workers = []
    for spec, end in zip(specs, links, strict=True):
        try:
            worker = Worker(spec, end, coordinator_alive=coordinator_watch(spec.coordinator_pid))
        except BaseException as err:   # noqa: BLE001
            crash(end, spec.name, err)
        worker.stage.rng_lock = rng_lock
        workers.append(worker)
    # weights were written on the host GPU's default stream; each thread runs on its own. synchronize() without a
    # device waits for the current one only, which need not be this host's GPU
    for device in sorted({spec.device for spec in specs if spec.device.startswith("cuda")}):
        torch.cuda.synchronize(torch.device(device))
    return workers


def host_main(specs: list[WorkerSpec]) -> None:
    """Process entry point of a host: the one process set-up (workers/runtime/process_setup.py; a host's workers share
    one device), then one thread per worker; exit when all have stopped."""
    check_consecutive(specs)
    set_up_process(max(s.threads for s in specs), specs[0].malloc, specs[0].device)
    codec = Codec(specs[0].run_id, specs[0].secret)
    try:
        links = host_links(specs, codec)
    except ValueError:
        if not os.path.isdir(os.path.dirname(specs[0].inbox.address.removeprefix("ipc://"))):
            os._exit(0)      # the attempt ended while this host started (its socket folder is gone)
        raise
    threads = [_Thread(worker) for worker in build_workers(specs, links)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for end in links:
        end.close()

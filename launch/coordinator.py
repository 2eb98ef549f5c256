"""The coordinator of one attempt: spawn workers, feed minibatches, place checkpoint markers, collect metrics.

One `Coordinator` runs one attempt from a start position (the beginning, or the position after a committed
checkpoint). Any failure (a worker exits, hangs, or reports a rejected message) raises `WorkerFailed`;
`launch.supervisor` then stops everything and starts a new attempt from the last committed checkpoint.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass

from engine.config import RunConfig
from launch.checkpoints import CheckpointStore
from launch.progress import EpochTracker
from workers.faults import Fault, die
from workers.messages import Codec, Kind, Message
from workers.transport import Link, Receiver, Sender, ipc_address
from workers.worker import WorkerSpec, worker_main

POLL_MS = 50
READY_TIMEOUT_S = 300.0


class WorkerFailed(RuntimeError):
    """A worker process died, hung or rejected a message; the text names it and its layers."""

    def __init__(self, rank: int, layers: list[int], what: str):
        self.rank, self.layers, self.what = rank, layers, what
        self.detected_at = time.perf_counter()   # recovery time counts from here, stopping the workers included
        super().__init__(f"worker {rank} (layers {layers[0]}..{layers[-1]}) {what}")


@dataclass
class Placement:
    """Which local modules each worker runs, where, with how many threads."""

    groups: list[list[int]]
    layer_ids: list[list[int]]
    devices: list[str]
    threads: list[int]


@dataclass
class Position:
    """Where feeding (re)starts: the next minibatch and how many were fed before it."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0


@dataclass
class AttemptOptions:
    """Knobs of the runtime that do not change what is computed."""

    window: int = 2
    trace_dir: str | None = None
    checkpoint_every: int = 0            # steps between checkpoints; 0 = only at epoch ends
    heartbeat_timeout: float = 120.0     # seconds without any message from a busy worker = hung
    fault: Fault | None = None
    resume_dir: str | None = None        # committed checkpoint folder the workers load
    malloc: str = "keep"                 # worker allocator policy, see WorkerSpec.malloc


def forkserver_context() -> mp.context.BaseContext:
    """Workers start from a forkserver that has imported torch once: a fresh import costs seconds each."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "engine.stage", "engine.auxnets", "engine.models", "workers.worker"])
    return ctx


class Coordinator:
    """Runs one attempt. Use as a context manager: leaving it always stops every worker (no orphans)."""

    def __init__(self, cfg: RunConfig, data, placement: Placement, run_dir: str, *, needs_input: list[bool],
                 opts: AttemptOptions, store: CheckpointStore, tracker: EpochTracker,
                 start: Position | None = None, next_checkpoint_id: int = 1):
        self.cfg, self.data, self.placement, self.run_dir = cfg, data, placement, run_dir
        self.opts, self.store, self.tracker = opts, store, tracker
        self.start_at = start or Position()
        self.next_ckpt = next_checkpoint_id
        self.run_id = uuid.uuid4().hex[:12]
        self.codec = Codec(self.run_id, secrets.token_hex(16))
        self.tmp = tempfile.mkdtemp(prefix="auglocal-")
        k = len(placement.groups)
        self.inboxes = [Link(ipc_address(f"w{r}", self.tmp), opts.window) for r in range(k)]
        self.results_link = Link(ipc_address("results", self.tmp), window=64)
        self.needs_input = needs_input
        self.procs: list[mp.Process] = []
        self.results: Receiver | None = None
        self.feed: Sender | None = None
        self.stats = tracker.stats
        self.stopped: set[int] = set()
        self.last_seen: dict[int, float] = {}
        self.pending: dict[int, dict] = {}          # checkpoint id -> {"acks": set, "snapshot": ..., "pos": ...}
        self.committed: list[int] = []

    # --- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _fault_for(self, rank: int) -> dict | None:
        f = self.opts.fault
        return f.to_dict() if f is not None and f.kind != "kill-coordinator" and f.worker == rank else None

    def specs(self) -> list[WorkerSpec]:
        k = len(self.placement.groups)
        stats = {"mean": list(self.data.mean), "std": list(self.data.std)}
        out = []
        for r, group in enumerate(self.placement.groups):
            later_needs_x = any(self.needs_input[j] for g in self.placement.groups[r + 1:] for j in g)
            trace = os.path.join(self.opts.trace_dir, f"trace_worker{r}.jsonl") if self.opts.trace_dir else None
            out.append(WorkerSpec(
                rank=r, modules=list(group), config=self.cfg.to_dict(),
                inbox=self.inboxes[r], outbox=self.inboxes[r + 1] if r + 1 < k else None,
                results=self.results_link, run_id=self.run_id, secret=self.codec.secret, out_dir=self.run_dir,
                coordinator_pid=os.getpid(), threads=self.placement.threads[r],
                device=self.placement.devices[r], send_input=later_needs_x, trace_path=trace, data_stats=stats,
                resume_dir=self.opts.resume_dir, fault=self._fault_for(r),
                malloc=self.opts.malloc))
        return out

    def start(self) -> None:
        """Bind the results inbox, spawn the workers and wait until each reports ready."""
        self.results = self.results_link.receiver(self.codec, "coordinator")
        ctx = forkserver_context()
        for spec in self.specs():
            p = ctx.Process(target=worker_main, args=(spec,), name=spec.name, daemon=True)
            p.start()
            self.procs.append(p)
        self.feed = self.inboxes[0].sender(self.codec)
        ready: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(ready) < len(self.procs):
            if time.monotonic() > deadline:
                r = min(set(range(len(self.procs))) - ready)
                raise WorkerFailed(r, self.placement.layer_ids[r], f"not ready after {READY_TIMEOUT_S:.0f} s")
            msg = self._poll(POLL_MS)
            if msg is not None and msg.kind is Kind.ACK and msg.meta.get("op") == "ready":
                ready.add(int(msg.meta["rank"]))
        now = time.perf_counter()
        self.stats.started = now
        self.last_seen = {r: now for r in range(len(self.procs))}

    def shutdown(self) -> None:
        """Stop whatever still runs, close sockets, remove the ipc folder."""
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for end in (self.feed, self.results):
            if end is not None:
                end.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- failure detection -------------------------------------------------------------------------------
    def _fail(self, rank: int, what: str) -> WorkerFailed:
        return WorkerFailed(rank, self.placement.layer_ids[rank], what)

    def check_workers(self) -> None:
        """A worker that exited (unless after its stop), or that was silent too long while busy, has failed."""
        now = time.perf_counter()
        for r, p in enumerate(self.procs):
            if not p.is_alive() and not (r in self.stopped and p.exitcode == 0):
                raise self._fail(r, f"died with exit code {p.exitcode}")
        # Workers upstream of a hung one fall silent too (blocked on a full link), but only after it did:
        # blame the one silent longest, not the first in rank order.
        silent = {r: now - self.last_seen.get(r, now) for r in range(len(self.procs)) if r not in self.stopped}
        if silent:
            r = max(silent, key=silent.get)
            if silent[r] > self.opts.heartbeat_timeout:
                raise self._fail(r, f"hung: no heartbeat or progress for {silent[r]:.0f} s "
                                    f"(--heartbeat-timeout {self.opts.heartbeat_timeout:g})")

    def _poll(self, timeout_ms: float) -> Message | None:
        try:
            msg = self.results.recv(timeout_ms)
        except TimeoutError:
            self.check_workers()
            return None
        rank = msg.meta.get("rank")
        if isinstance(rank, int):
            self.last_seen[rank] = time.perf_counter()
        return msg

    # --- message handling --------------------------------------------------------------------------------
    def handle(self, msg: Message) -> None:
        op = msg.meta.get("op")
        if msg.kind is Kind.ACK and op == "stop":
            rank = int(msg.meta["rank"])
            self.stopped.add(rank)
            self.stats.updates.update({int(k): int(v) for k, v in msg.meta["updates"].items()})
            self.stats.gpu_peak_bytes[rank] = int(msg.meta.get("gpu_peak_bytes", 0))
            self.stats.rejected += int(msg.meta.get("rejected", 0))
            if rank + 1 < len(self.procs):
                self.stats.max_in_flight[rank + 1] = int(msg.meta["max_in_flight"])
        elif msg.kind is Kind.ACK and op == "checkpoint":
            self._checkpoint_ack(int(msg.meta["id"]), int(msg.meta["rank"]))
        elif msg.kind is Kind.CONTROL and op == "error":
            raise self._fail(int(msg.meta["rank"]), f"stopped: {msg.meta.get('detail', '')}")
        elif msg.kind is Kind.CONTROL and op == "rejected":
            pass   # counted by the worker, reported with its stop acknowledgement
        elif msg.kind is Kind.HEARTBEAT:
            pass
        else:
            self.tracker.handle(msg)

    def _checkpoint_ack(self, ckpt_id: int, rank: int) -> None:
        entry = self.pending[ckpt_id]
        entry["acks"].add(rank)
        if rank == len(self.procs) - 1:
            # the last worker reports every minibatch before the marker ahead of its ack, and none after it
            entry["snapshot"] = self.tracker.snapshot()
        if len(entry["acks"]) == len(self.procs):
            pos: Position = entry["pos"]
            self.store.commit(ckpt_id, {"id": ckpt_id, "next_epoch": pos.epoch, "next_step": pos.step,
                                        "global_step": pos.global_step, "tracker": entry["snapshot"].to_dict(),
                                        "config": self.cfg.to_dict(), "created": time.time()})
            self.committed.append(ckpt_id)
            del self.pending[ckpt_id]

    # --- feeding -----------------------------------------------------------------------------------------
    def _send(self, message: Message) -> None:
        while True:
            try:
                self.feed.send(message, POLL_MS)
                self.stats.max_in_flight[0] = max(self.stats.max_in_flight.get(0, 0), self.feed.in_flight)
                break
            except TimeoutError:
                self._drain()            # read queued acknowledgements first: a finished checkpoint commits
                self.check_workers()
        self._drain()

    def _drain(self) -> None:
        while (msg := self._poll(0)) is not None:
            self.handle(msg)

    def _marker(self, pos: Position) -> None:
        ckpt_id = self.next_ckpt
        self.next_ckpt += 1
        directory = self.store.prepare(ckpt_id)
        self.pending[ckpt_id] = {"acks": set(), "snapshot": None, "pos": pos}
        self._send(Message(Kind.CONTROL, "coordinator", pos.epoch, pos.step,
                           meta={"op": "checkpoint", "id": ckpt_id, "dir": str(directory)}))

    def run(self) -> None:
        """Feed minibatches from the start position, each epoch's test batches behind its last training
        batch, checkpoint markers every `checkpoint_every` steps and at epoch ends, then the stop marker."""
        cfg, data = self.cfg, self.data
        bs = cfg.batch_size
        steps = data.steps_per_epoch(bs)
        n_test = data.num_test_batches(bs)
        g = self.start_at.global_step
        fault = self.opts.fault
        for epoch in range(self.start_at.epoch, cfg.epochs):
            first = self.start_at.step if epoch == self.start_at.epoch else 0
            fed = first
            for step in range(first, steps):
                if cfg.max_steps is not None and g >= cfg.max_steps:
                    break
                x, y = data.train_batch(cfg.seed, epoch, step, bs)
                self._send(Message(Kind.TRAIN, "coordinator", epoch, step, tensors={"h": x, "y": y},
                                   meta={"g": g}))
                g += 1
                fed += 1
                if fault is not None and fault.kind == "kill-coordinator" and g - 1 == fault.step:
                    die()
                every = self.opts.checkpoint_every
                if every and g % every == 0 and step + 1 < steps:
                    self._marker(Position(epoch, step + 1, g))
            if fed == 0:
                break
            self.tracker.expect_epoch(epoch, fed)
            for i in range(n_test):
                x, y = data.test_batch(i, bs)
                self._send(Message(Kind.EVAL, "coordinator", epoch, i, tensors={"h": x, "y": y}))
            self._marker(Position(epoch + 1, 0, g))
        self._send(Message(Kind.CONTROL, "coordinator", meta={"op": "stop"}))
        while len(self.stopped) < len(self.procs):
            msg = self._poll(POLL_MS)
            if msg is not None:
                self.handle(msg)
        for p in self.procs:
            p.join(timeout=30)


def default_devices(k: int, gpus: list[str]) -> list[str]:
    """Worker r goes to gpus[r % len(gpus)]; 'cpu' everywhere when no GPU is named."""
    return [gpus[r % len(gpus)] for r in range(k)] if gpus else ["cpu"] * k


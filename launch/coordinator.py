"""The coordinator: spawn workers, feed minibatches, collect metrics, stop cleanly, assemble the result."""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine.config import RunConfig
from engine.trainer import EpochRecord, StepRecord
from workers.messages import Codec, Kind, Message
from workers.transport import Link, Receiver, Sender, ipc_address
from workers.worker import WorkerSpec, worker_main

POLL_MS = 50
READY_TIMEOUT_S = 300.0


class WorkerFailed(RuntimeError):
    """A worker process died or stopped answering; the message names it and its layers."""


@dataclass
class Placement:
    """Which local modules each worker runs, where, with how many threads."""

    groups: list[list[int]]
    layer_ids: list[list[int]]
    devices: list[str]
    threads: list[int]


@dataclass
class PipelineStats:
    """What the coordinator learned while the run went: per-worker busy time and the wall clock."""

    busy_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    started: float = 0.0
    first_step_done: float | None = None
    steps_done: int = 0
    images_done: int = 0
    updates: dict[int, int] = field(default_factory=dict)
    max_in_flight: dict[int, int] = field(default_factory=dict)   # link into worker r -> most unconsumed
    step_done_at: list[float] = field(default_factory=list)         # perf_counter when each step finished
    gpu_peak_bytes: dict[int, int] = field(default_factory=dict)      # worker -> torch max_memory_allocated

    def steady_images_per_s(self, batch_size: int, skip: int = 2) -> float | None:
        """Throughput after the pipeline has filled: steps skip.. end, timed between completions."""
        t = self.step_done_at[skip:]
        if len(t) < 2:
            return None
        return (len(t) - 1) * batch_size / (t[-1] - t[0])

    def busy_fractions(self, now: float) -> list[float]:
        elapsed = max(now - self.started, 1e-9)
        return [self.busy_s[r] / elapsed for r in sorted(self.busy_s)]


def forkserver_context() -> mp.context.BaseContext:
    """Workers start from a forkserver that has imported torch once: a fresh import costs seconds each."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "engine.stage", "engine.auxnets", "engine.models", "workers.worker"])
    return ctx


class Coordinator:
    """Runs one pipelined training run. Use as a context manager: leaving it always stops every worker."""

    def __init__(self, cfg: RunConfig, data, placement: Placement, out_dir: str, *, needs_input: list[bool],
                 trace_dir: str | None = None, window: int = 2, delays: dict[int, float] | None = None):
        self.cfg = cfg
        self.data = data
        self.placement = placement
        self.out_dir = out_dir
        self.run_id = uuid.uuid4().hex[:12]
        self.codec = Codec(self.run_id, secrets.token_hex(16))
        self.tmp = tempfile.mkdtemp(prefix="auglocal-")
        k = len(placement.groups)
        self.inboxes = [Link(ipc_address(f"w{r}", self.tmp), window) for r in range(k)]
        self.results_link = Link(ipc_address("results", self.tmp), window=64)
        self.needs_input = needs_input
        self.trace_dir = trace_dir
        self.delays = delays or {}
        self.procs: list[mp.Process] = []
        self.results: Receiver | None = None
        self.feed: Sender | None = None
        self.stats = PipelineStats()
        self.stopped: set[int] = set()

    # --- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def specs(self) -> list[WorkerSpec]:
        k = len(self.placement.groups)
        stats = {"mean": list(self.data.mean), "std": list(self.data.std)}
        out = []
        for r, group in enumerate(self.placement.groups):
            later_needs_x = any(self.needs_input[j] for g in self.placement.groups[r + 1:] for j in g)
            trace = os.path.join(self.trace_dir, f"trace_worker{r}.jsonl") if self.trace_dir else None
            out.append(WorkerSpec(
                rank=r, num_workers=k, modules=list(group), config=self.cfg.to_dict(),
                inbox=self.inboxes[r], outbox=self.inboxes[r + 1] if r + 1 < k else None,
                results=self.results_link, run_id=self.run_id, secret=self.codec.secret, out_dir=self.out_dir,
                coordinator_pid=os.getpid(), threads=self.placement.threads[r],
                device=self.placement.devices[r], send_input=later_needs_x, trace_path=trace, data_stats=stats,
                delay_s=self.delays.get(r, 0.0)))
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
                raise WorkerFailed(f"workers {sorted(set(range(len(self.procs))) - ready)} not ready after "
                                   f"{READY_TIMEOUT_S:.0f} s")
            msg = self._poll_results(POLL_MS)
            if msg is not None and msg.kind is Kind.ACK and msg.meta.get("op") == "ready":
                ready.add(int(msg.meta["rank"]))
        self.stats.started = time.perf_counter()

    def shutdown(self) -> None:
        """Stop whatever still runs (no orphans), close sockets, remove the ipc folder."""
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
    def check_workers(self) -> None:
        for r, p in enumerate(self.procs):
            if not p.is_alive() and not (r in self.stopped and p.exitcode == 0):
                layers = self.placement.layer_ids[r]
                raise WorkerFailed(f"worker {r} (layers {layers[0]}..{layers[-1]}) died with exit code "
                                   f"{p.exitcode}")

    def _poll_results(self, timeout_ms: float) -> Message | None:
        try:
            return self.results.recv(timeout_ms)
        except TimeoutError:
            self.check_workers()
            return None

    # --- the run -----------------------------------------------------------------------------------------
    def _send(self, message: Message, handle: Callable[[Message], None]) -> None:
        while True:
            try:
                self.feed.send(message, POLL_MS)
                self.stats.max_in_flight[0] = max(self.stats.max_in_flight.get(0, 0), self.feed.in_flight)
                return
            except TimeoutError:
                self.check_workers()
            self._drain(handle)

    def _drain(self, handle: Callable[[Message], None]) -> None:
        while True:
            msg = self._poll_results(0)
            if msg is None:
                return
            handle(msg)

    def run(self, on_step: Callable[[StepRecord], None], on_epoch: Callable[[EpochRecord], None]
            ) -> list[EpochRecord]:
        """Feed every minibatch of every epoch, then that epoch's test batches, then a stop marker."""
        cfg, data = self.cfg, self.data
        bs = cfg.batch_size
        steps = data.steps_per_epoch(bs)
        n_test = data.num_test_batches(bs)
        tracker = _EpochTracker(cfg, steps, n_test, self.stats, on_step, on_epoch, self.placement)

        def handle(msg: Message) -> None:
            if msg.kind is Kind.ACK and msg.meta.get("op") == "stop":
                self.stopped.add(int(msg.meta["rank"]))
                self.stats.updates.update({int(k): int(v) for k, v in msg.meta["updates"].items()})
                rank = int(msg.meta["rank"])
                self.stats.gpu_peak_bytes[rank] = int(msg.meta.get("gpu_peak_bytes", 0))
                if rank + 1 < len(self.procs):
                    self.stats.max_in_flight[rank + 1] = int(msg.meta["max_in_flight"])
            else:
                tracker.handle(msg)

        global_step = 0
        for epoch in range(cfg.epochs):
            fed = 0
            for step in range(steps):
                if cfg.max_steps is not None and global_step >= cfg.max_steps:
                    break
                x, y = data.train_batch(cfg.seed, epoch, step, bs)
                self._send(Message(Kind.TRAIN, "coordinator", epoch, step, tensors={"h": x, "y": y}),
                           handle)
                fed += 1
                global_step += 1
            if fed == 0:
                break
            tracker.expect_epoch(epoch, fed)
            for i in range(n_test):
                x, y = data.test_batch(i, bs)
                self._send(Message(Kind.EVAL, "coordinator", epoch, i, tensors={"h": x, "y": y}), handle)
        self._send(Message(Kind.CONTROL, "coordinator", meta={"op": "stop"}), handle)
        while len(self.stopped) < len(self.procs):
            msg = self._poll_results(POLL_MS)
            if msg is not None:
                handle(msg)
        for p in self.procs:
            p.join(timeout=30)
        return tracker.history


class _EpochTracker:
    """Turns worker reports into step and epoch records as they complete (in whatever order they arrive)."""

    def __init__(self, cfg: RunConfig, steps: int, n_test: int, stats: PipelineStats,
                 on_step: Callable[[StepRecord], None], on_epoch: Callable[[EpochRecord], None],
                 placement: Placement):
        self.cfg, self.steps, self.n_test, self.stats = cfg, steps, n_test, stats
        self.on_step, self.on_epoch = on_step, on_epoch
        self.last_rank = len(placement.groups) - 1
        self.local_losses: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)
        self.train: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # loss*n, correct, n
        self.test: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])           # correct, n, batches
        self.fed: dict[int, int] = {}
        self.done_train: dict[int, int] = defaultdict(int)
        self.history: list[EpochRecord] = []
        self.best = 0.0
        self.epoch_started: dict[int, float] = {}
        self.last_step_t: float | None = None

    def expect_epoch(self, epoch: int, fed: int) -> None:
        self.fed[epoch] = fed
        self._maybe_close(epoch)

    def handle(self, msg: Message) -> None:
        if msg.kind is Kind.METRICS:
            self._metrics(msg)
        elif msg.kind is Kind.EVAL:
            t = self.test[msg.epoch]
            t[0] += int(msg.meta["correct"])
            t[1] += int(msg.meta["n"])
            t[2] += 1
            self._maybe_close(msg.epoch)

    def _metrics(self, msg: Message) -> None:
        rank = int(msg.meta["rank"])
        self.stats.busy_s[rank] += float(msg.meta["busy"])
        key = (msg.epoch, msg.step)
        self.local_losses[key].update({int(k): float(v) for k, v in msg.meta["losses"].items()})
        if rank != self.last_rank:
            return
        now = time.perf_counter()
        n = int(msg.meta["n"])
        losses = self.local_losses.pop(key)
        top = losses[max(losses)]
        correct = int(msg.meta["correct"])
        tr = self.train[msg.epoch]
        tr[0] += top * n
        tr[1] += correct
        tr[2] += n
        self.epoch_started.setdefault(msg.epoch, now)
        prev = self.last_step_t if self.last_step_t is not None else self.stats.started
        self.last_step_t = now
        self.stats.steps_done += 1
        self.stats.step_done_at.append(now)
        self.stats.images_done += n
        if self.stats.first_step_done is None:
            self.stats.first_step_done = now
        self.done_train[msg.epoch] += 1
        lr = _lr(self.cfg, msg.epoch)
        self.on_step(StepRecord(msg.epoch, msg.step, self.stats.steps_done, top, 100.0 * correct / n, lr,
                                n / max(now - prev, 1e-9), losses))

    def _maybe_close(self, epoch: int) -> None:
        if epoch not in self.fed or self.done_train[epoch] < self.fed[epoch] or self.test[epoch][2] < self.n_test:
            return
        if any(r.epoch == epoch for r in self.history):
            return
        loss_n, correct, n = self.train[epoch]
        t_correct, t_n, _ = self.test[epoch]
        acc = 100.0 * t_correct / max(t_n, 1)
        self.best = max(self.best, acc)
        started = self.epoch_started.get(epoch, time.perf_counter())
        record = EpochRecord(epoch, loss_n / max(n, 1), 100.0 * correct / max(n, 1), acc, self.best,
                             time.perf_counter() - started)
        self.history.append(record)
        self.on_epoch(record)


def _lr(cfg: RunConfig, epoch: int) -> float:
    from engine.config import optim_and_schedule

    return optim_and_schedule(cfg)[1](epoch)


def assemble(cfg: RunConfig, data, out_dir: str):
    """Rebuild the network and load every worker's per-layer files into it: the trained model and aux nets."""
    from engine.config import build_network
    from workers.layer_files import load_layers_into

    model, aux = build_network(cfg, data)
    updates = load_layers_into(model, aux, out_dir)
    return model, aux, updates


def default_devices(k: int, gpus: list[str]) -> list[str]:
    """Worker r goes to gpus[r % len(gpus)]; 'cpu' everywhere when no GPU is named."""
    return [gpus[r % len(gpus)] for r in range(k)] if gpus else ["cpu"] * k


def cuda_available() -> bool:
    return torch.cuda.is_available()

"""The coordinator of one attempt: spawn workers, feed the feed plan, collect reports, commit checkpoints.

One `Coordinator` runs one attempt from a start position (the beginning, or the position after a committed
checkpoint). Any failure (a worker exits, hangs, or reports that it cannot go on) raises `WorkerFailed`;
with `--recovery one` the coordinator first tries to restart that worker alone (launch/run/recovery.py) and
goes on feeding; otherwise, or when that cannot work, the attempt loop (`auglocal.launch.run.pipeline.run_attempts`)
stops everything and starts a new attempt from the last committed checkpoint. The coordinator takes its
links, its worker launcher and its clock from outside, so a test can drive it in one process with in-memory
links (workers/links/memlink.py).
"""

from __future__ import annotations

import os
import secrets
import signal
import time
import uuid
from collections.abc import Callable

from auglocal.engine.config import RunConfig
from auglocal.engine.feed import (
    CheckpointMarker,
    EpochEnd,
    EpochFed,
    EvalBatch,
    FeedShape,
    Position,
    Stop,
    TrainStep,
    feed_plan,
)
from auglocal.engine.precision import activation_dtype
from auglocal.launch.backends.base import WorkerHandle
from auglocal.launch.backends.one_host.processes import WorkerProcess, forkserver_context
from auglocal.launch.backends.one_host.sockets import make_socket_dir, remove_socket_dir
from auglocal.launch.backends.one_host.spares import SparePool
from auglocal.launch.run import stop_request
from auglocal.launch.run.attempt import AttemptOptions, Placement, RunCounters, WorkerFailed
from auglocal.launch.run.checkpoints import CheckpointStore
from auglocal.launch.run.divergence import Divergence, settle
from auglocal.launch.run.progress import EpochTracker
from auglocal.launch.run.recovery import OneWorkerRecovery
from auglocal.launch.run.replicas import blame_dead_peer, feed_link, replica_info
from auglocal.launch.run.transport_choice import OneHostKeys, link_address
from auglocal.workers.links.link import Link
from auglocal.workers.links.registry import BY_NAME
from auglocal.workers.runtime.faults import die
from auglocal.workers.runtime.layer_shipping import LayerFileSink
from auglocal.workers.runtime.worker import WorkerSpec, worker_name
from auglocal.workers.wire import protocol
from auglocal.workers.wire.frame_bounds import results_bound
from auglocal.workers.wire.messages import Codec, Kind, Message, MessageError
from auglocal.workers.wire.protocol import CheckpointMeta, InboxSchema, Route, SeqMeta, TrainMeta, activation_spec

POLL_MS = 50
READY_TIMEOUT_S = 300.0

__all__ = ["AttemptOptions", "Coordinator", "Placement", "Position", "RunCounters", "WorkerFailed"]


class Coordinator:
    """Runs one attempt. Use as a context manager: leaving it always stops every worker (no orphans)."""

    def __init__(self, cfg: RunConfig, data, placement: Placement, run_dir: str, *, needs_input: list[bool],
                 opts: AttemptOptions, store: CheckpointStore, tracker: EpochTracker,
                 start: Position | None = None, next_checkpoint_id: int = 1, counters: RunCounters | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.cfg, self.data, self.placement, self.run_dir = cfg, data, placement, run_dir
        self.opts, self.store, self.tracker = opts, store, tracker
        self.start_at = start or Position()
        self.next_ckpt = next_checkpoint_id
        self.counters = counters or RunCounters()
        self.clock = clock
        self.run_id = uuid.uuid4().hex[:12]
        self.codec = Codec(self.run_id, secrets.token_hex(16))
        self.tmp = make_socket_dir(self.run_id)   # launch/backends/one_host/sockets.py: found, removed if we die
        self.k = len(placement.groups)               # every worker: R replicas x K stages (launch/run/replicas.py)
        self.stages = placement.stages
        try:                                         # shutdown() removes the folder; without a coordinator, here
            self.keys = OneHostKeys.generate(self.k) if BY_NAME[opts.transport].curve else None
            self.inboxes = [self.link(f"w{r}", opts.window, owner=r) for r in range(self.k)]
            self.results_link = self.link("results", 64, owner=-1)
        except BaseException:
            remove_socket_dir(self.tmp)
            raise
        self.needs_input = needs_input
        self.ranks = {worker_name(r): r for r in range(self.k)}
        self.workers: list[WorkerHandle] = []
        self.results = None
        self.feed = None
        self.stats = tracker.stats
        self.ready: set[int] = set()
        self.stopped: set[int] = set()
        self.last_seen: dict[int, float] = {}
        self.waiting: dict[int, str | None] = {}
        self.pending: dict[int, dict] = {}          # checkpoint id -> {"acks": set, "pos": Position}
        self.committed: list[int] = []
        self.ready_timeout_s = READY_TIMEOUT_S
        self.pids: dict[int, list[int | None]] = {}  # rank -> pid of each process that ran it in this attempt
        self.recovery = OneWorkerRecovery(self)
        self.layer_files = LayerFileSink()            # layer files shipped by workers on other machines
        self.layer_files.allow(os.path.join(run_dir, "layers"))
        self.specs_control = [self.recovery.control_link(r) for r in range(self.k)]
        self.handlers: dict[Kind, Callable[[Message], None]] = {
            Kind.READY: self._on_ready, Kind.HEARTBEAT: lambda msg: None, Kind.METRICS: self._on_metrics,
            Kind.EVAL_RESULT: self._on_eval_result, Kind.CHECKPOINT_ACK: self._on_checkpoint_ack,
            Kind.STOPPED: self._on_stopped, Kind.ERROR: self._on_error, Kind.REJECTED: self._on_rejected,
            Kind.LAYER_FILE: self._on_layer_file, Kind.DIVERGED: self._on_diverged,
        }
        protocol.check_handlers(self.handlers, Route.REPORT, "coordinator")

    def link(self, name: str, window: int, owner: int) -> Link:
        """The link named `name` whose receiving end worker `owner` binds (-1: the coordinator), per
        --transport: an ipc socket in the attempt's folder, or a loopback tcp port (curve: with owner's key)."""
        server_key = self.keys.public(owner) if self.keys else None
        return Link(link_address(self.opts.transport, name, self.tmp), window, self.opts.transport,
                    server_key=server_key)

    @property
    def curve(self):
        """The coordinator's CURVE key pair (None unless --transport curve)."""
        return self.keys.coordinator if self.keys else None

    # --- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> Coordinator:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _fault_for(self, rank: int) -> dict | None:
        f = self.opts.fault.as_seen_by(rank) if self.opts.fault is not None else None
        return f.to_dict() if f is not None else None

    def _schema(self, rank: int) -> InboxSchema | None:
        if self.placement.input_shapes is None:
            return None
        size = self.cfg.input_size
        image = activation_spec((3, size, size))
        if rank % self.stages == 0:         # worker 0's input is the image itself, float32 at any precision
            return InboxSchema(activation=image, image=image)
        dtype = str(activation_dtype(self.cfg.precision)).removeprefix("torch.")
        return InboxSchema(activation=activation_spec(self.placement.input_shapes[rank], dtype), image=image)

    def specs(self) -> list[WorkerSpec]:
        stats = {"mean": list(self.data.mean), "std": list(self.data.std)}
        heartbeat_s = min(1.0, self.opts.heartbeat_timeout / 8)
        out = []
        ends = self.stages
        for r, group in enumerate(self.placement.groups):
            last = r % ends == ends - 1         # the last stage of its replica's pipeline
            later = self.placement.groups[r + 1:(r // ends + 1) * ends]
            later_needs_x = any(self.needs_input[j] for g in later for j in g)
            trace = os.path.join(self.opts.trace_dir, f"trace_worker{r}.jsonl") if self.opts.trace_dir else None
            out.append(WorkerSpec(
                rank=r, modules=list(group), config=self.cfg.to_dict(),
                inbox=self.inboxes[r], outbox=None if last else self.inboxes[r + 1],
                results=self.results_link, run_id=self.run_id, secret=self.codec.secret, out_dir=self.run_dir,
                coordinator_pid=os.getpid(), schema=self._schema(r), threads=self.placement.threads[r],
                device=self.placement.devices[r], send_input=later_needs_x, trace_path=trace, data_stats=stats,
                resume_dir=self.opts.resume_dir, fault=self._fault_for(r), heartbeat_s=heartbeat_s,
                malloc=self.opts.malloc, control=self.specs_control[r],
                curve=self.keys.workers[r] if self.keys else None, admit=self.keys.admitted() if self.keys else (),
                replay_log_bytes=int(self.opts.replay_log_mb * (1 << 20)), spill_dir=self.opts.spill_dir or self.tmp,
                replay_log=self.placement.hosts is None and self.placement.replicas == 1,   # none replays them
                hold_after_stop=self.recovery.holds_after_stop, cuda_graphs=self.opts.cuda_graphs,
                replica=replica_info(self.placement, r, self.tmp, self.run_id, 2 * self.opts.heartbeat_timeout + 30)))
        return out

    def attach(self, results, feed, workers: list[WorkerHandle]) -> None:
        """Use these links and worker handles (tests: in-memory links and stand-in processes)."""
        self.results, self.feed, self.workers = results, feed, list(workers)
        self.results.on_foreign = self._count_stranger
        self.feed.on_foreign = self._count_stranger     # credits it refused (links/credit_pipe.py), as workers do
        self.pids = {r: [getattr(w, "pid", None)] for r, w in enumerate(self.workers)}
        now = self.clock()
        self.last_seen = {r: now for r in range(self.k)}

    def start(self) -> None:
        """Bind the results inbox, spawn the workers and wait until each reports ready."""
        results = self.results_link.receiver(self.codec, "coordinator", curve=self.curve,
                                             max_frame=results_bound(ship_layers=False))
        for key in self.keys.admitted() if self.keys else ():
            results.allowed.allow(key)
        ctx = forkserver_context()
        if self.placement.hosts is None:    # before the specs: they say whether workers wait for their release
            spares = self.opts.spares if self.opts.recovery == "one" else 0
            self.recovery.enable(lambda spec: WorkerProcess(spec, ctx), SparePool(ctx, spares) if spares else None)
        workers = []
        specs = self.specs()
        try:
            if self.placement.hosts is None:
                for spec in specs:
                    workers.append(WorkerProcess(spec, ctx))
            for group in self.placement.hosts or []:   # one handle per rank: its host process
                host = WorkerProcess(specs[group[0]], ctx, hosted=[specs[r] for r in group])
                workers.extend([host] * len(group))
        finally:
            self.attach(results, feed_link(self), workers)
        self.wait_ready()
        self.recovery.warm(specs)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(self.ready) < self.k:
            if time.monotonic() > deadline:
                r = min(set(range(self.k)) - self.ready)
                raise self._fail(r, f"not ready after {READY_TIMEOUT_S:.0f} s")
            self._drain(POLL_MS)
        now = time.perf_counter()
        self.stats.started = now
        self.last_seen = {r: self.clock() for r in range(self.k)}

    def shutdown(self) -> None:
        """Stop whatever still runs, close sockets, remove the ipc folder."""
        for w in {id(w): w for w in self.workers}.values():   # a host process stands for several ranks
            w.stop()
        self.recovery.close()
        for end in (self.feed, self.results):
            if end is not None:
                end.close()
        remove_socket_dir(self.tmp)

    # --- failure detection -------------------------------------------------------------------------------
    def _fail(self, rank: int | None, what: str, restartable: bool = True) -> WorkerFailed:
        layers = self.placement.layer_ids[rank] if rank is not None else []
        return WorkerFailed(rank, layers, what, restartable)

    def check_workers(self) -> None:
        """A worker that exited (unless after its stop) has failed; so has one silent too long while not waiting.

        Workers heartbeat inside every wait, also while blocked on a full link, so silence means computing
        or stuck. Should several be silent, the one not blocked on a peer, then the one silent longest,
        is blamed."""
        for r, w in enumerate(self.workers):
            if not w.is_alive() and not (r in self.stopped and w.exitcode == 0):
                if w.orphaned():
                    raise self._fail(r, "lost its launcher: the forkserver died (its workers were stopped)")
                shared = [q for q, v in enumerate(self.workers) if v is w]
                host = (f" (with its host process, which ran workers {shared[0]}..{shared[-1]} as threads: any "
                        "of them may have caused it)" if len(shared) > 1 else "")
                raise self._fail(r, f"died with exit code {w.exitcode}{host}")
        now = self.clock()
        timeout = self.opts.heartbeat_timeout
        silent = {r: now - self.last_seen.get(r, now) for r in self.ready if r not in self.stopped}
        over = {r: s for r, s in silent.items() if s > timeout}
        if over:
            unblocked = {r: s for r, s in over.items() if self.waiting.get(r) != "send"}
            pool = unblocked or over
            r = max(pool, key=pool.get)
            raise self._fail(r, f"hung: no heartbeat or progress for {pool[r]:.0f} s "
                                f"(--heartbeat-timeout {timeout:g})")

    def _poll(self, timeout_ms: float) -> Message | None:
        """Next report of this run, validated and attributed to its worker; strangers are counted and dropped."""
        stop_request.raise_if_lost()      # a Ctrl-C that a C extension swallowed (launch/run/stop_request.py)
        try:
            msg = protocol.validate(self.results.recv(timeout_ms), Route.REPORT)
        except TimeoutError:
            self.check_workers()
            return None
        except MessageError as err:
            raise self._fail(self.ranks.get(err.sender), f"sent a malformed report: {err}") from err
        if msg.sender in self.recovery.stale:
            return self._poll(0)         # left behind by a process that one-worker recovery replaced
        rank = self.ranks.get(msg.sender)
        if rank is None:
            raise self._fail(None, f"reported as unknown sender {msg.sender!r}")
        self.last_seen[rank] = self.clock()
        self.waiting[rank] = msg.meta.waiting if msg.kind is Kind.HEARTBEAT else None
        return msg

    def _drain(self, timeout_ms: float = 0) -> None:
        msg = self._poll(timeout_ms)
        while msg is not None:
            protocol.dispatch(self.handlers, msg)
            msg = self._poll(0)

    # --- report handlers ---------------------------------------------------------------------------------
    def _count_stranger(self, err: MessageError) -> None:
        self.counters.rejected += 1

    def _on_ready(self, msg: Message) -> None:
        self.ready.add(self.ranks[msg.sender])

    def _on_metrics(self, msg: Message) -> None:
        rank = self.ranks[msg.sender]
        try:
            rows = protocol.metrics_rows(msg)       # one step, or a busy worker's batch of them
        except MessageError as err:
            raise self._fail(rank, f"sent a malformed report: {err}") from err
        for epoch, step, meta in rows:
            if self.recovery.fresh_metrics(rank, epoch, step):
                self.tracker.metrics(rank, epoch, step, meta)
                self.recovery.after_metrics(self.tracker.pending)

    def _on_eval_result(self, msg: Message) -> None:
        rank = self.ranks[msg.sender]
        if rank % self.stages != self.stages - 1:
            raise self._fail(rank, "reported a test result although it is not the last worker")
        if self.recovery.dedupe.fresh(rank, "eval", msg.epoch, msg.step):
            self.tracker.eval_result(msg.epoch, msg.meta)

    def _on_rejected(self, msg: Message) -> None:
        self.counters.rejected += 1

    def _on_layer_file(self, msg: Message) -> None:
        try:
            self.layer_files.receive(msg)
        except ValueError as err:
            raise self._fail(self.ranks[msg.sender], f"sent a bad layer file: {err}") from err

    def _on_error(self, msg: Message) -> None:
        if self.placement.replicas > 1:
            blame_dead_peer(self)     # a replica's reduction fails when a peer dies: the dead one is to blame
        raise self._fail(self.ranks[msg.sender], f"stopped: {msg.meta.detail}", msg.meta.restartable)

    def _on_diverged(self, msg: Message) -> None:
        """--nonfinite stop: find the earliest divergence, then fail the run for good (launch/run/divergence.py)."""
        div = settle(self, Divergence.from_message(self.ranks[msg.sender], msg))
        err = self._fail(div.worker, f"stopped: {div.describe()}", restartable=False)
        err.divergence = div
        raise err

    def _on_stopped(self, msg: Message) -> None:
        rank = self.ranks[msg.sender]
        self.stopped.add(rank)
        self.stats.updates.update({int(k): int(v) for k, v in msg.meta.updates.items()})
        self.stats.gpu_peak_bytes[rank] = msg.meta.gpu_peak_bytes
        if msg.meta.replay_log:
            self.stats.replay_log[rank] = msg.meta.replay_log
        if (rank + 1) % self.stages:
            self.stats.max_in_flight[rank + 1] = msg.meta.max_in_flight

    def _on_checkpoint_ack(self, msg: Message) -> None:
        """Commit a checkpoint once every worker has written its layers. At that moment exactly the steps
        before the marker are complete (see EpochTracker), so the tracker's snapshot belongs to it."""
        ckpt_id, rank = msg.meta.id, self.ranks[msg.sender]
        self.recovery.acked(rank, ckpt_id)
        entry = self.pending.get(ckpt_id)
        if (entry is None or rank in entry["acks"]) and self.recovery.repeated_ack(rank, ckpt_id):
            return
        if entry is None or rank in entry["acks"]:
            raise self._fail(rank, f"acknowledged checkpoint {ckpt_id}, which is not pending for it")
        entry["acks"].add(rank)
        if len(entry["acks"]) == self.k:
            if "dir" in entry and (unfinished := self.layer_files.incomplete(entry["dir"])):
                raise self._fail(rank, f"acknowledged checkpoint {ckpt_id} with layer files unfinished: {unfinished}")
            pos: Position = entry["pos"]
            self.store.commit(ckpt_id, {"id": ckpt_id, "next_epoch": pos.epoch, "next_step": pos.step,
                                        "global_step": pos.global_step,
                                        "tracker": self.tracker.snapshot().to_dict(),
                                        "config": self.cfg.to_dict(), "created": time.time()})
            self.committed.append(ckpt_id)
            del self.pending[ckpt_id]
            if "seq" in entry:           # markers this coordinator fed (tests may plant others)
                self.recovery.on_commit(ckpt_id, entry["seq"], entry["dir"])

    # --- feeding -----------------------------------------------------------------------------------------
    def _guarded(self, wait: Callable[[], None]) -> None:
        """Run a wait; a worker failure in it goes to one-worker recovery, which re-raises when it cannot help."""
        try:
            wait()
        except WorkerFailed as err:
            self.recovery.recover(err)

    def _put(self, message: Message, guard: Callable[[Callable[[], None]], None]) -> None:
        """Put `message` on the feed link, reading reports (each wait through `guard`) while it is full."""
        while True:
            try:
                self.feed.send(message, POLL_MS)
                self.stats.max_in_flight[0] = max(self.stats.max_in_flight.get(0, 0), self.feed.in_flight)
                return
            except TimeoutError:
                guard(self._drain)       # read queued acknowledgements first: a finished checkpoint commits
                guard(self.check_workers)

    def _send_once(self, message: Message) -> None:
        """Feed `message` without recovery: a failure while waiting raises."""
        self._put(message, lambda wait: wait())

    def _send(self, message: Message, build: Callable[[], Message] | None = None) -> None:
        """Feed one event's message (kept, or its `build`er, for a replay to a restarted worker 0)."""
        self._put(message, self._guarded)
        self.recovery.fed(message.meta.seq, build or (lambda: message))
        self.recovery.stopping |= message.kind is Kind.STOP    # a failure from here on comes after the marker
        self._guarded(self._drain)

    def _train_message(self, event: TrainStep, seq: int) -> Message:
        x, y = self.data.train_batch(self.cfg.seed, event.epoch, event.step, self.cfg.batch_size)
        return Message(Kind.TRAIN, "coordinator", event.epoch, event.step, tensors={"h": x, "y": y},
                       meta=TrainMeta(event.global_step, seq))

    def _eval_message(self, event: EvalBatch, seq: int) -> Message:
        x, y = self.data.test_batch(event.index, self.cfg.batch_size)
        return Message(Kind.EVAL, "coordinator", event.epoch, event.index, tensors={"h": x, "y": y},
                       meta=SeqMeta(seq))

    def _feed_train(self, event: TrainStep) -> None:
        seq = self.recovery.next_seq()
        self._send(self._train_message(event, seq), lambda: self._train_message(event, seq))
        f = self.opts.fault
        if f is not None and f.fires("feed", g=event.global_step):
            if f.kind == "kill-pair":
                for r in (f.worker, f.worker + 1):
                    os.kill(self.workers[r].pid, signal.SIGKILL)
            else:
                die()

    def _feed_eval(self, event: EvalBatch) -> None:
        seq = self.recovery.next_seq()
        self._send(self._eval_message(event, seq), lambda: self._eval_message(event, seq))

    def _feed_marker(self, event: CheckpointMarker) -> None:
        ckpt_id = self.next_ckpt
        self.next_ckpt += 1
        directory = self.store.prepare(ckpt_id)
        self.layer_files.allow(directory)
        pos = event.resume_at
        seq = self.recovery.next_seq()
        self.pending[ckpt_id] = {"acks": set(), "pos": pos, "seq": seq, "dir": str(directory)}
        self._send(Message(Kind.CHECKPOINT, "coordinator", pos.epoch, pos.step,
                           meta=CheckpointMeta(ckpt_id, str(directory), seq)))

    def _feed_stop(self, event: Stop) -> None:
        """Feed the stop marker (kept for a replay, like every event) and wait until every worker reported
        stopped, recovering a failed worker alone meanwhile as during the feed; then release held workers."""
        self._send(Message(Kind.STOP, "coordinator", meta=SeqMeta(self.recovery.next_seq())))
        while len(self.stopped) < self.k:
            self._guarded(lambda: self._drain(POLL_MS))
        self.recovery.release_all()
        for w in self.workers:
            w.join(timeout=30)

    def feed_shape(self) -> FeedShape:
        bs = self.cfg.batch_size
        return FeedShape(self.cfg.epochs, self.data.steps_per_epoch(bs), self.data.num_test_batches(bs),
                         self.cfg.max_steps, self.opts.checkpoint_every)

    def run(self) -> None:
        """Feed the feed plan from the start position, then wait for every worker's stop report."""
        feeders = {TrainStep: self._feed_train, EvalBatch: self._feed_eval, CheckpointMarker: self._feed_marker,
                   EpochFed: lambda e: self.tracker.expect_epoch(e.epoch, e.steps), EpochEnd: lambda e: None,
                   Stop: self._feed_stop}
        for event in feed_plan(self.feed_shape(), self.start_at):
            feeders[type(event)](event)

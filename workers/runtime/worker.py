"""One pipeline worker: receive a minibatch, run its stage, send the output on early, report to the coordinator.

The worker takes its links from outside (`WorkerLinks`): ZeroMQ ends in a worker process (`open_links`), or
in-memory links (workers/links/memlink.py) when a test drives it in one process. Every message it receives is
validated against the protocol table (workers/wire/protocol.py) and dispatched through `handlers`, which covers
exactly the kinds that travel down the pipeline. While it waits, on receive or on a full outgoing link, it
sends a heartbeat at least every `heartbeat_s`, so a worker is silent only when it computes or is stuck.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch
from auglocal.engine.nonfinite import NonFiniteLoss, value_text
from auglocal.workers.runtime.control import RecoveryControl
from auglocal.workers.runtime.device_log import DeferredLog
from auglocal.workers.runtime.faults import FAULT_ACTIONS, Fault, die
from auglocal.workers.runtime.liveness import coordinator_watch  # noqa: F401 - importers of it here still work
from auglocal.workers.runtime.replay_log import ReplayLog, spill_failure
from auglocal.workers.runtime.reports import MetricsBatch
from auglocal.workers.runtime.spec import (  # noqa: F401 - the spec's names, where importers look for them
    CONTROL_POLL_MS,
    HEARTBEAT_S,
    POLL_MS,
    REPLAY_LOG_BYTES,
    CoordinatorGone,
    WorkerError,
    WorkerSpec,
    build_stage,
    worker_name,
)
from auglocal.workers.runtime.trace import Tracer
from auglocal.workers.runtime.worker_links import (  # noqa: F401 - as above
    WorkerLinks,
    bind_control,
    bind_inbox,
    open_links,
    reopen_outbox,
    to_host,
)
from auglocal.workers.wire import protocol
from auglocal.workers.wire.messages import Codec, Kind, Message, MessageError
from auglocal.workers.wire.protocol import (
    SEQUENCED,
    CheckpointAckMeta,
    DivergedMeta,
    ErrorMeta,
    EvalResultMeta,
    HeartbeatMeta,
    NoMeta,
    RejectedMeta,
    Route,
    StoppedMeta,
    TrainMeta,
)


class Worker(RecoveryControl):
    """The receive-compute-send loop of one worker; `handlers` is its half of the protocol."""

    def __init__(self, spec: WorkerSpec, links: WorkerLinks, stage=None, *,
                 coordinator_alive: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic, poll_ms: float = POLL_MS):
        self.spec = spec
        self.codec = Codec(spec.run_id, spec.secret)
        self.links = links
        self.stage = stage if stage is not None else build_stage(spec)
        self.tracer = Tracer(spec.rank, spec.trace_path)
        self.is_last = links.outbox is None
        self.max_in_flight = 0
        self.fault = Fault(**spec.fault) if spec.fault else None
        self.coordinator_alive = coordinator_alive or (lambda: True)
        self.clock = clock
        self.poll_ms = min(poll_ms, spec.heartbeat_s * 1000, CONTROL_POLL_MS if links.control else poll_ms)
        self._last_report = clock()
        self.metrics = MetricsBatch(spec.name, time.monotonic)   # step reports not sent yet (runtime/reports.py)
        self._batch_reports = hasattr(links.inbox, "ready")      # ZeroMQ inboxes; in-memory ones: every step
        self.stopped = False
        self.released = False
        self.diverged = False        # a module's loss went non-finite under --nonfinite stop (_report_diverged)
        self.handlers: dict[Kind, Callable[[Message], None]] = {
            Kind.TRAIN: self._train, Kind.EVAL: self._eval, Kind.CHECKPOINT: self._checkpoint,
            Kind.STOP: self._stop, Kind.RELINK: self._relink, Kind.EXPECT_REPLAY: self._expect_replay,
            Kind.COMMITTED: self._committed, Kind.RELEASE: self._release,
        }
        self.last_seq = spec.resume_seq       # seq of the last DOWN message handled
        self.replay_from: str | None = None   # sender whose repeats (seq <= last_seq) are dropped, after a restart
        self.dropped_repeats = 0
        self._in_control = False
        self.log = (DeferredLog(ReplayLog(spec.replay_log_bytes, spec.spill_dir, spec.name), self.codec)
                    if links.outbox is not None and spec.replay_log else None)
        protocol.check_handlers(self.handlers, Route.DOWN, "worker")
        links.inbox.on_foreign = self._report_rejected
        if links.control is not None:                          # strangers there are reported too
            links.control.on_foreign = self._report_rejected
        if links.outbox is not None:
            links.outbox.on_foreign = self._report_rejected    # refused credits (workers/links/credit_pipe.py)
        if spec.resume_dir:
            from auglocal.workers.runtime.layer_files import load_stage_layers

            load_stage_layers(self.stage, spec.resume_dir)

    # --- waiting: heartbeats on a timer, never an orphan --------------------------------------------------
    def _check_coordinator(self) -> None:
        if not self.coordinator_alive():
            raise CoordinatorGone(f"{self.spec.name}: coordinator {self.spec.coordinator_pid} is gone")

    def _maybe_heartbeat(self, waiting: str) -> None:
        if self.clock() - self._last_report < self.spec.heartbeat_s:
            return
        if self.metrics:              # held step reports prove liveness as well as a heartbeat
            self._flush_metrics()
            return
        try:
            self.links.results.send(Message(Kind.HEARTBEAT, self.spec.name, meta=HeartbeatMeta(waiting)), 0)
            self._last_report = self.clock()
        except TimeoutError:
            pass   # the coordinator is busy; it will see our next message

    def _recv(self) -> Message | None:
        """Next message of this run, validated against the table; a peer's malformed message ends the worker.
        None once the coordinator has released this (stopped) worker."""
        while True:
            if self.metrics.due():
                self._flush_metrics()
            self._maybe_heartbeat("recv")
            self._poll_control()
            if self.released:
                return None
            try:
                wait_ms = self.metrics.wait_ms(self.poll_ms)      # held reports go when due, idle or not
                msg = protocol.validate(self.links.inbox.recv(wait_ms), Route.DOWN, self.spec.schema)
            except TimeoutError:
                self._check_coordinator()
                continue
            except MessageError as err:
                self._fail(f"{self.spec.name} rejected a message: {err}")
            if self._in_sequence(msg):
                return msg

    def _in_sequence(self, msg: Message) -> bool:
        """Whether to handle `msg`: the next seq, or (False) a repeat that a restarted upstream resends.

        A repeat is dropped only while the coordinator has announced a replay from that sender; otherwise it
        is an error, as is a gap (a message lost). seq -1 marks an unsequenced message (in-process tests)."""
        if msg.kind not in SEQUENCED or msg.meta.seq < 0:
            return True
        seq = msg.meta.seq
        if seq <= self.last_seq:
            if self.replay_from is None:
                self._poll_control()      # the announcement may be waiting on the control inbox
            if self.replay_from == msg.sender:
                self.dropped_repeats += 1
                return False
            self._fail(f"{self.spec.name}: {msg.kind.value} seq {seq} from {msg.sender} arrived after seq "
                       f"{self.last_seq}: it would be handled twice")
        if seq != self.last_seq + 1:
            self._fail(f"{self.spec.name} rejected a message: {msg.kind.value} seq {seq} from {msg.sender} follows "
                       f"seq {self.last_seq}: {seq - self.last_seq - 1} message(s) lost on the way (a peer's "
                       "message that did not parse is dropped as a stranger's)")
        if msg.sender == self.replay_from:
            self.replay_from = None       # the restarted upstream has caught up
        self.last_seq = seq
        return True

    def _send(self, end, message: Message, log: bool = True) -> None:
        """Send, heartbeating while the link is full; a report to the coordinator also proves liveness.

        Downstream sends go to whatever the outgoing link is now (a relink may replace it while we wait) and
        are kept in the replay log unless `log` is False (a replay itself)."""
        downstream = end is self.links.outbox
        while True:
            try:
                frames = (self.links.outbox if downstream else end).send(message, self.poll_ms)
                break
            except TimeoutError:
                self._check_coordinator()
                self._maybe_heartbeat("send")
                if downstream:
                    self._poll_control()
        if downstream and log:
            self._log(message, frames if isinstance(frames, list) else None)
        if end is self.links.results:
            self._last_report = self.clock()

    def _log(self, message: Message, frames: list | None = None) -> None:
        """Keep a sent message for replay: by reference, the frames its send used where the link returns them
        (ZeroMQ links), so nothing is encoded or copied twice (workers/runtime/replay_log.py `keep`). Device
        tensors are not encoded here: the log queues their copy to pinned host memory on a side stream and
        encodes them once it is done (workers/runtime/device_log.py), so no host round trip waits for the GPU
        on the step's path."""
        if self.log is not None and message.kind in SEQUENCED and message.meta.seq >= 0:
            try:
                self.log.append(message.meta.seq, message, frames)
            except OSError as err:          # a spill file (written in line or by the log's thread) failed
                self._fail(*spill_failure(self.spec.name, self.spec.spill_dir, err))

    def _report(self, kind: Kind, meta, epoch: int = 0, step: int = 0) -> None:
        if self.metrics:                 # reports keep their order: held step reports first
            self._flush_metrics()
        self._send(self.links.results, Message(kind, self.spec.name, epoch, step, meta=meta))

    def _flush_metrics(self) -> None:
        self._send(self.links.results, self.metrics.take())

    def _report_rejected(self, err: MessageError) -> None:
        try:
            self.links.results.send(Message(Kind.REJECTED, self.spec.name, meta=RejectedMeta(str(err)[:2000])),
                                    self.poll_ms)
        except TimeoutError:
            pass

    def _report_diverged(self, err: NonFiniteLoss) -> None:
        """--nonfinite stop: report where the loss went non-finite, then drop every minibatch and marker that
        follows (`run`). The worker stays: its upstream is not blocked, its downstream still reports the steps
        before this one (the coordinator waits for those to name the earliest divergence, launch/run/divergence.py),
        and no checkpoint after the divergence can commit without this worker's acknowledgement."""
        self.diverged = True
        self._report(Kind.DIVERGED, DivergedMeta(err.layer, err.what, value_text(err.value)), err.epoch, err.step)

    def _fail(self, detail: str, restartable: bool = True) -> None:
        try:
            if self.metrics:
                self.links.results.send(self.metrics.take(), self.poll_ms)
            self.links.results.send(Message(Kind.ERROR, self.spec.name,
                                            meta=ErrorMeta(detail[:2000], restartable)), self.poll_ms)
        except TimeoutError:
            pass
        raise WorkerError(detail)

    def _wait_consumed(self, end) -> None:
        """Wait until the receiver of `end` has consumed everything sent on it, heartbeating meanwhile. On the
        outgoing link, control messages are handled meanwhile (a relink replaces the link and replays onto it)."""
        downstream = end is self.links.outbox
        while True:
            try:
                (self.links.outbox if downstream else end).wait_all(self.poll_ms)
                return
            except TimeoutError:
                self._check_coordinator()
                self._maybe_heartbeat("send")
                if downstream:
                    self._poll_control()

    def _sleep_alive(self, seconds: float) -> None:
        """Sleep `seconds` the way a slow but healthy worker computes: heartbeating."""
        end = self.clock() + seconds
        while (left := end - self.clock()) > 0:
            time.sleep(min(left, self.spec.heartbeat_s / 2))
            self._maybe_heartbeat("recv")

    def _outgoing(self, t: torch.Tensor) -> torch.Tensor:
        """An output as the outgoing link carries it: on its device to a thread worker of this process (by
        reference) or over a link that moves device memory itself (cuda-ipc, nccl: `keeps_device`); a host copy
        only for a host transport (ipc, tcp, curve, gloo)."""
        outbox = self.links.outbox
        if getattr(outbox, "by_reference", False) or getattr(outbox, "keeps_device", False):
            return t.detach()
        return to_host(t)

    # --- fault hooks (workers/runtime/faults.py says which kind fires where) --------------------------------------
    def _fire(self, point: str, **where) -> bool:
        return self.fault is not None and self.fault.fires(point, **where)

    def _send_faulty(self, out: Message) -> bool:
        """Put the fault's bad message on the outgoing link; True when the real one must not follow."""
        kind = self.fault.kind
        if kind == "foreign":
            stranger = Codec("another-run", "not-the-secret")
            self.links.outbox.send_raw(stranger.encode(Message(Kind.TRAIN, "stranger", out.epoch, out.step,
                                                               tensors=dict(out.tensors))))
            return False
        frames = self.codec.encode(out)
        if kind == "truncated":
            frames[-1] = bytes(frames[-1])[: max(1, len(frames[-1]) // 2)]
        else:
            frames = [b"\xc1 not a msgpack header", *frames[1:]]
        self.links.outbox.send_raw(frames)
        return True

    # --- message handlers -----------------------------------------------------------------------------------
    def _train(self, msg: Message) -> None:
        """One training minibatch: admit it, run the stage (its output leaves early through `emit`), then report
        the step's metrics."""
        self._admit(msg)
        h, y = msg.tensors["h"], msg.tensors["y"]
        x = msg.tensors.get("x", h if self.spec.is_first else None)   # worker 0's input is the image
        t0, c0 = time.perf_counter(), time.thread_time()
        sent: dict[str, float] = {}
        emit = None if self.is_last else self._emitter(msg, y, x, t0, sent)
        stage_input = x if self.stage.needs_input else None
        try:
            result = self.stage.train_step(h, y, stage_input, step=msg.step, emit=emit)
        except NonFiniteLoss as err:
            self._report_diverged(err)
            return
        if self._fire("step"):
            self._sleep_alive(self.fault.delay)
        self._report_step(msg, result, t0, c0, sent)

    def _admit(self, msg: Message) -> None:
        """Fire a `train` fault, refuse a minibatch already applied, and follow the epoch."""
        if self._fire("train", g=msg.meta.g):
            FAULT_ACTIONS[self.fault.kind]()
        position = (msg.epoch, msg.step)
        if self.stage.last_applied is not None and position <= self.stage.last_applied:
            self._fail(f"{self.spec.name}: minibatch {position} arrived after {self.stage.last_applied}: it would "
                       "be applied twice")
        if self.stage.epoch != msg.epoch:
            self.stage.set_epoch(msg.epoch)

    def _emitter(self, msg: Message, y: torch.Tensor, x: torch.Tensor | None, t0: float,
                 sent: dict[str, float]) -> Callable[[torch.Tensor], None]:
        """What the stage calls with its output as soon as it exists: send it downstream (or the fault's bad
        message instead), and note in `sent` when the send began and ended, which is not this worker's work."""
        g = msg.meta.g

        def emit(out: torch.Tensor) -> None:
            t_emit, c_emit = time.perf_counter(), time.thread_time()
            self.tracer.span("compute", msg.epoch, msg.step, t0, t_emit)
            tensors = {"h": self._outgoing(out), "y": y}
            if self.spec.send_input and x is not None:
                tensors["x"] = x
            out_msg = Message(Kind.TRAIN, self.spec.name, msg.epoch, msg.step, layer=self.stage.layer_ids[-1],
                              tensors=tensors, meta=TrainMeta(g, msg.meta.seq))
            if self._fire("send", g=g) and self._send_faulty(out_msg):
                self._log(out_msg)     # the log keeps what was meant: a replay heals the receiver
                return
            self._send(self.links.outbox, out_msg)
            sent["t"], sent["t_emit"] = time.perf_counter(), t_emit
            sent["c"], sent["c_emit"] = time.thread_time(), c_emit
            self.max_in_flight = max(self.max_in_flight, self.links.outbox.in_flight)
            self.tracer.span("send", msg.epoch, msg.step, t_emit, sent["t"])
        return emit

    def _report_step(self, msg: Message, result, t0: float, c0: float, sent: dict[str, float]) -> None:
        """The step's metrics: losses, hits, and its busy and CPU time less the time spent sending."""
        t1, c1 = time.perf_counter(), time.thread_time()
        self.tracer.span("aux+update" if sent else "compute", msg.epoch, msg.step, sent.get("t", t0), t1)
        busy = (t1 - t0) - (sent["t"] - sent["t_emit"] if sent else 0.0)
        cpu = (c1 - c0) - (sent["c"] - sent["c_emit"] if sent else 0.0)
        correct = int(result.correct) if result.correct is not None else None
        self.metrics.add(msg.epoch, msg.step, {"busy": busy, "n": result.batch_size, "correct": correct, "cpu": cpu,
                                               "losses": {str(k): v for k, v in result.loss_values().items()},
                                               "done": t1})
        if self.metrics.due() or not self._batch_reports:
            self._flush_metrics()

    def _eval(self, msg: Message) -> None:
        out = self.stage.eval_step(msg.tensors["h"])
        if self._fire("eval"):
            time.sleep(self.fault.delay)     # computing, so no heartbeat
        if self._fire("step"):
            self._sleep_alive(self.fault.delay)
        y = msg.tensors["y"]
        if self.is_last:
            correct = int((out.argmax(1).cpu() == y.cpu()).sum())   # y is on the GPU after a cuda-ipc/nccl link
            self._report(Kind.EVAL_RESULT, EvalResultMeta(correct, int(y.shape[0])), msg.epoch, msg.step)
        else:
            self._send(self.links.outbox, Message(Kind.EVAL, self.spec.name, msg.epoch, msg.step,
                                                  tensors={"h": self._outgoing(out), "y": y}, meta=msg.meta))

    def _save_layers(self, directory: str, before_each=None) -> None:
        """Write this worker's layer files into `directory`, or ship them there when it is another machine's."""
        from auglocal.workers.runtime.layer_files import save_stage_layers

        if not self.spec.writes_layers:
            return      # a replica other than 0: replica 0 writes the stage's (identical) layers
        try:
            if not self.spec.ship_layers:
                save_stage_layers(self.stage, directory, before_each)
                return
            import tempfile

            from auglocal.workers.runtime.layer_shipping import layer_file_messages

            with tempfile.TemporaryDirectory(prefix=f"auglocal-{self.spec.name}-") as local:
                save_stage_layers(self.stage, local, before_each)
                for message in layer_file_messages(self.spec.name, directory, local):
                    self._send(self.links.results, message)
        except OSError as err:
            self._fail(f"{self.spec.name} cannot write its layer files into {directory}: {err.strerror or err}",
                       restartable=False)

    def _checkpoint(self, msg: Message) -> None:
        """Save this worker's layers into the checkpoint folder, pass the marker on, acknowledge.

        Dependencies only point forward, so saving when the marker passes gives a consistent cut: every layer
        has applied exactly the minibatches fed before the marker."""
        ckpt_id = msg.meta.id
        written = []

        def before_each(layer_id: int) -> None:
            if len(written) == 1 and self._fire("checkpoint", checkpoint=ckpt_id):
                die()
            written.append(layer_id)

        self._save_layers(msg.meta.dir, before_each)
        if self.links.outbox is not None:
            self._send(self.links.outbox, Message(Kind.CHECKPOINT, self.spec.name, msg.epoch, msg.step,
                                                  meta=msg.meta))
        self._report(Kind.CHECKPOINT_ACK, CheckpointAckMeta(ckpt_id), msg.epoch, msg.step)

    def _stop(self, msg: Message) -> None:
        """Save the final layers, pass the marker on (it goes into the replay log like any sequenced message),
        report stopped. A held worker then waits for its release (`run`)."""
        self._save_layers(os.path.join(self.spec.out_dir, "layers"))
        self.tracer.close()
        if self.links.outbox is not None:
            self._send(self.links.outbox, Message(Kind.STOP, self.spec.name, msg.epoch, msg.step, meta=msg.meta))
            self._wait_consumed(self.links.outbox)
        if self._fire("stop"):
            die()
        self._report(Kind.STOPPED, StoppedMeta(self.max_in_flight, self._gpu_peak(),
                                               {str(k): v for k, v in self.stage.update_counts.items()},
                                               self.log.stats() if self.log is not None else {}),
                     msg.epoch, msg.step)
        self._wait_consumed(self.links.results)
        self.stopped = True

    def _gpu_peak(self) -> int:
        device = torch.device(self.spec.device)
        return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0

    def run(self) -> None:
        """Report ready, then handle messages until the stop marker has passed; a held worker then stays until
        released (`_await_release`)."""
        self._report(Kind.READY, NoMeta())
        while not self.stopped:
            t_wait = time.perf_counter()
            msg = self._recv()
            self.tracer.span("idle", msg.epoch, msg.step, t_wait, time.perf_counter())
            if not self.diverged:
                protocol.dispatch(self.handlers, msg)
        if self.spec.hold_after_stop and self.links.control is not None:
            self._await_release()

    def _await_release(self) -> None:
        """After the stop marker, until the coordinator's RELEASE: relink and replay the log (the marker included)
        when the next worker restarts, drop the repeats of a restarted upstream, heartbeat, and exit when the
        coordinator is gone. Nothing new may arrive: every message after the marker is a repeat."""
        while (msg := self._recv()) is not None:
            self._fail(f"{self.spec.name}: {msg.kind.value} from {msg.sender} arrived after the stop marker")



"""One pipeline worker process: receive a minibatch, run its stage, send the output on early, report metrics."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from dataclasses import dataclass, field

import psutil
import torch

from workers.faults import Fault, die, hang
from workers.messages import Codec, Kind, Message, MessageError
from workers.trace import Tracer
from workers.transport import Link, Receiver, Sender

POLL_MS = 1000          # how often a blocked worker checks that its coordinator is still alive
_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@dataclass
class WorkerSpec:
    """Everything a worker needs, as plain data handed to the new process (never sent over the wire)."""

    rank: int
    modules: list[int]            # indices into the run's list of local modules
    config: dict                  # engine.config.RunConfig.to_dict(), fully resolved
    inbox: Link                   # this worker binds it; activations (or the coordinator's batches) arrive
    outbox: Link | None           # the next worker's inbox; None for the last worker
    results: Link                 # the coordinator's inbox for metrics and acknowledgements
    run_id: str
    secret: str
    out_dir: str                  # per-layer files of the final state go to out_dir/layers/
    coordinator_pid: int
    threads: int = 1
    device: str = "cpu"
    send_input: bool = False      # forward the network input x downstream (a later stage needs it)
    trace_path: str | None = None
    data_stats: dict = field(default_factory=dict)   # {"mean": [...], "std": [...]} for InfoPro
    resume_dir: str | None = None  # a committed checkpoint folder to start from (per-layer files)
    fault: dict | None = None     # workers.faults.Fault as a dict, for this worker only
    malloc: str = "return"        # 'return': freed activations go back to the OS (less memory, ~2x slower on
                                  # CPU from page faults); 'keep': glibc's default heap reuse (fastest)

    @property
    def name(self) -> str:
        return f"worker{self.rank}"


class CoordinatorGone(RuntimeError):
    """The coordinator died: a worker must not linger as an orphan."""


class WorkerError(RuntimeError):
    """This worker cannot go on (a malformed message from its own pipeline, a minibatch seen twice)."""


#: Rejections that say "not from this run" (a stray or stale process): count and drop, keep training.
#: (MessageError.field values of Codec._check_identity)
FOREIGN_FIELDS = ("secret", "run_id")


def to_host(t: torch.Tensor) -> torch.Tensor:
    """CPU copy for the wire. A GPU tensor goes through pinned host memory (torch's caching host allocator,
    so the pinned block is reused), copied asynchronously and waited for: the DMA path without a staging copy."""
    if t.device.type != "cuda":
        return t
    host = torch.empty_like(t, device="cpu", pin_memory=True)   # keeps a channels_last layout for the wire
    host.copy_(t, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return host


def return_freed_memory() -> None:
    """Tell glibc to serve large blocks by mmap so freed activations go back to the OS (see README)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 65536)
    except (OSError, AttributeError):
        pass


def build_stage(spec: WorkerSpec):
    """Rebuild the run's network from its config (same seed, so the same initial weights) and keep a slice."""
    from engine.config import RunConfig, build_network, optim_and_schedule
    from engine.precision import Kernels
    from engine.rules import build_local_modules
    from engine.stage import Stage

    cfg = RunConfig.from_dict(spec.config)
    stats = _Stats(**spec.data_stats) if spec.data_stats else None
    model, aux = build_network(cfg, stats)
    modules = build_local_modules(model, aux)
    optim, schedule = optim_and_schedule(cfg)
    mine = [modules[i] for i in spec.modules]
    return Stage(mine, optim, schedule, seed=cfg.seed, device=spec.device, kernels=Kernels.from_config(cfg))


@dataclass
class _Stats:
    mean: list
    std: list


class Worker:
    """The receive-compute-send loop of one worker; see `run` for the message protocol."""

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.codec = Codec(spec.run_id, spec.secret)
        self.stage = build_stage(spec)
        self.inbox: Receiver = spec.inbox.receiver(self.codec, spec.name)
        self.outbox: Sender | None = spec.outbox.sender(self.codec) if spec.outbox else None
        self.results: Sender = spec.results.sender(self.codec)
        self.tracer = Tracer(spec.rank, spec.trace_path)
        self.is_last = spec.outbox is None
        self.max_in_flight = 0
        self.rejected = 0
        self.fault = Fault(**spec.fault) if spec.fault else None
        self._coordinator = psutil.Process(spec.coordinator_pid)   # keeps its start time: pid reuse shows
        if spec.resume_dir:
            from workers.layer_files import load_stage_layers

            load_stage_layers(self.stage, spec.resume_dir)

    # --- waiting without becoming an orphan -------------------------------------------------------------
    def _check_coordinator(self) -> None:
        """A dead coordinator stays a zombie until its parent reaps it (a parent that may itself wait for our
        output to end): count a zombie, or a new process that reused its pid, as gone."""
        try:
            alive = self._coordinator.is_running() and self._coordinator.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        if not alive:
            raise CoordinatorGone(f"{self.spec.name}: coordinator {self.spec.coordinator_pid} is gone")

    def _recv(self) -> Message:
        """Next message; while idle, prove liveness with heartbeats; drop foreign messages, fail on corrupt."""
        while True:
            try:
                return self.inbox.recv(POLL_MS)
            except TimeoutError:
                self._check_coordinator()
                self._heartbeat()
            except MessageError as err:
                if err.field in FOREIGN_FIELDS:
                    self.rejected += 1
                    self._report("rejected", f"{err}")
                    continue
                self._report("error", f"{self.spec.name} rejected a message: {err}")
                raise WorkerError(str(err)) from err

    def _heartbeat(self) -> None:
        try:
            self.results.send(Message(Kind.HEARTBEAT, self.spec.name, meta={"rank": self.spec.rank}), 0)
        except TimeoutError:
            pass   # the coordinator is busy; it will see our next message

    def _report(self, op: str, detail: str) -> None:
        try:
            self.results.send(Message(Kind.CONTROL, self.spec.name, meta={"op": op, "rank": self.spec.rank,
                                                                           "detail": detail[:2000]}), POLL_MS)
        except TimeoutError:
            pass

    def _send(self, sender: Sender, message: Message) -> None:
        while True:
            try:
                sender.send(message, POLL_MS)
                return
            except TimeoutError:
                self._check_coordinator()

    # --- message handlers --------------------------------------------------------------------------------
    def _fault_at(self, msg: Message, *kinds: str) -> bool:
        f = self.fault
        return f is not None and f.kind in kinds and int(msg.meta.get("g", -1)) == f.step

    def _send_faulty(self, msg: Message) -> None:
        """Instead of (corrupt, truncated) or before (foreign) the real message, put a bad one on the link."""
        kind = self.fault.kind
        if kind == "foreign":
            stranger = Codec("another-run", "not-the-secret")
            with self.spec.outbox.sender(stranger) as sender:
                sender.send(Message(Kind.TRAIN, "stranger", msg.epoch, msg.step, tensors=dict(msg.tensors)), POLL_MS)
                time.sleep(0.2)   # linger 0 would drop the message on close
            return
        frames = self.codec.encode(msg)
        if kind == "truncated":
            frames[-1] = bytes(frames[-1])[: max(1, len(frames[-1]) // 2)]
        else:
            frames = [b"\xc1 not a msgpack header", *frames[1:]]
        self.outbox.socket.send_multipart(frames)

    def _train(self, msg: Message) -> None:
        if self._fault_at(msg, "kill"):
            die()
        if self._fault_at(msg, "hang"):
            hang()
        position = (msg.epoch, msg.step)
        if self.stage.last_applied is not None and position <= self.stage.last_applied:
            self._report("error", f"{self.spec.name}: minibatch {position} arrived after {self.stage.last_applied}")
            raise WorkerError(f"minibatch {position} would be applied twice")
        h, y = msg.tensors["h"], msg.tensors["y"]
        x = msg.tensors.get("x", h if self.spec.rank == 0 else None)   # worker 0's input is the image
        if self.stage.epoch != msg.epoch:
            self.stage.set_epoch(msg.epoch)
        t0 = time.perf_counter()
        sent = {}

        def emit(out: torch.Tensor) -> None:
            t_emit = time.perf_counter()
            self.tracer.span("compute", msg.epoch, msg.step, t0, t_emit)
            tensors = {"h": to_host(out), "y": y}
            if self.spec.send_input and x is not None:
                tensors["x"] = x
            out_msg = Message(Kind.TRAIN, self.spec.name, msg.epoch, msg.step, layer=self.stage.layer_ids[-1],
                              tensors=tensors, meta={"g": msg.meta.get("g", -1)})
            if self._fault_at(msg, "corrupt", "truncated", "foreign"):
                self._send_faulty(out_msg)
                if self.fault.kind != "foreign":
                    return
            self._send(self.outbox, out_msg)
            sent["t"], sent["t_emit"] = time.perf_counter(), t_emit
            self.max_in_flight = max(self.max_in_flight, self.outbox.in_flight)
            self.tracer.span("send", msg.epoch, msg.step, t_emit, sent["t"])

        stage_input = x if self.stage.needs_input else None
        result = self.stage.train_step(h, y, stage_input, step=msg.step,
                                       emit=None if self.is_last else emit)
        if self.fault is not None and self.fault.kind == "slow":
            time.sleep(self.fault.delay)
        t1 = time.perf_counter()
        self.tracer.span("aux+update" if sent else "compute", msg.epoch, msg.step,
                         sent.get("t", t0), t1)
        send_s = sent["t"] - sent["t_emit"] if sent else 0.0
        busy = (t1 - t0) - send_s
        meta = {"rank": self.spec.rank, "busy": busy, "n": result.batch_size,
                "losses": {str(k): v for k, v in result.loss_values().items()}}
        if result.correct is not None:
            meta["correct"] = int(result.correct)
        self._send(self.results, Message(Kind.METRICS, self.spec.name, msg.epoch, msg.step, meta=meta))

    def _eval(self, msg: Message) -> None:
        out = self.stage.eval_step(msg.tensors["h"])
        if self.is_last:
            correct = int((out.argmax(1).cpu() == msg.tensors["y"]).sum())
            self._send(self.results, Message(Kind.EVAL, self.spec.name, msg.epoch, msg.step,
                                             meta={"correct": correct, "n": int(msg.tensors["y"].shape[0])}))
        else:
            self._send(self.outbox, Message(Kind.EVAL, self.spec.name, msg.epoch, msg.step,
                                            tensors={"h": to_host(out), "y": msg.tensors["y"]}))

    def _checkpoint(self, msg: Message) -> None:
        """Save this worker's layers into the checkpoint folder, pass the marker on, acknowledge.

        Dependencies only point forward, so saving when the marker passes gives a consistent cut: every layer
        has applied exactly the minibatches fed before the marker."""
        from workers.layer_files import save_stage_layers

        ckpt_id = int(msg.meta["id"])
        written = []

        def before_each(layer_id: int) -> None:
            f = self.fault
            if f is not None and f.kind == "kill-checkpoint" and f.checkpoint == ckpt_id and len(written) == 1:
                die()
            written.append(layer_id)

        save_stage_layers(self.stage, msg.meta["dir"], before_each)
        if self.outbox is not None:
            self._send(self.outbox, Message(Kind.CONTROL, self.spec.name, msg.epoch, msg.step, meta=dict(msg.meta)))
        self._send(self.results, Message(Kind.ACK, self.spec.name, msg.epoch, msg.step,
                                         meta={"op": "checkpoint", "id": ckpt_id, "rank": self.spec.rank}))

    def _stop(self, msg: Message) -> None:
        from workers.layer_files import save_stage_layers

        save_stage_layers(self.stage, os.path.join(self.spec.out_dir, "layers"))
        self.tracer.close()
        if self.outbox is not None:
            self._send(self.outbox, Message(Kind.CONTROL, self.spec.name, msg.epoch, msg.step,
                                            meta={"op": "stop"}))
            self.outbox.wait_all(60_000)
        self._send(self.results, Message(Kind.ACK, self.spec.name, msg.epoch, msg.step,
                                         meta={"op": "stop", "rank": self.spec.rank,
                                               "max_in_flight": self.max_in_flight,
                                               "gpu_peak_bytes": self._gpu_peak(),
                                               "rejected": self.rejected,
                                               "updates": {str(k): v for k, v in
                                                           self.stage.update_counts.items()}}))
        self.results.wait_all(60_000)

    def _gpu_peak(self) -> int:
        device = torch.device(self.spec.device)
        return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else 0

    def run(self) -> None:
        """TRAIN: stage step, output sent downstream before the local aux work; EVAL: primary forward in
        eval mode; CONTROL stop: save this worker's layers, pass the stop on, acknowledge, exit."""
        self._send(self.results, Message(Kind.ACK, self.spec.name, meta={"op": "ready", "rank": self.spec.rank}))
        while True:
            t_wait = time.perf_counter()
            msg = self._recv()
            self.tracer.span("idle", msg.epoch, msg.step, t_wait, time.perf_counter())
            if msg.kind is Kind.TRAIN:
                self._train(msg)
            elif msg.kind is Kind.EVAL:
                self._eval(msg)
            elif msg.kind is Kind.CONTROL and msg.meta.get("op") == "checkpoint":
                self._checkpoint(msg)
            elif msg.kind is Kind.CONTROL and msg.meta.get("op") == "stop":
                self._stop(msg)
                return

    def close(self) -> None:
        for end in (self.inbox, self.outbox, self.results):
            if end is not None:
                end.close()


def worker_main(spec: WorkerSpec) -> None:
    """Process entry point. Ctrl-C is the coordinator's to handle: workers ignore SIGINT and are stopped by it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if spec.malloc == "return":
        return_freed_memory()
    torch.set_num_threads(spec.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(spec.threads))
    worker = Worker(spec)
    try:
        worker.run()
    except CoordinatorGone:
        pass
    except WorkerError:
        try:
            worker.results.wait_all(POLL_MS)   # the coordinator must read why we stop before it sees us exit
        except TimeoutError:
            pass
        os._exit(3)
    finally:
        worker.close()

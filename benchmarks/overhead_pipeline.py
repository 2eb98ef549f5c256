"""One tree's side of benchmarks/overhead.py: a null-compute pipeline of real workers, the ipc hop and its floor.

Run by path (`python benchmarks/overhead_pipeline.py ...` with PYTHONPATH naming the tree to measure), so the
auglocal it imports is that tree's, old or new: it imports nothing of `benchmarks` and uses only what every
tree since schema 3 has (`Worker(spec, links, stage=)`, `open_links`, `Link`, `Codec`). It prints one JSON line.

The pipeline: K worker processes (fork) each run the engine's worker loop (workers/runtime/worker.py) on its
ipc links, control inbox and replay log, with a stage that does nothing but hand its input on; a driver in
this process plays the coordinator (feeds train minibatches in order, drains every report). So the step rate
is the runtime's own cost. Each worker's CPU time (all its threads: ZeroMQ's I/O thread too) is read with
psutil over the measured steps. With `--breakdown` each worker wraps the loop's parts in timers (receive,
decode, validate, control poll, compute, send, credit, metrics, log, heartbeat) and reports inclusive
microseconds per step; the timers cost a little, so the headline figures come from runs without them.
"""

from __future__ import annotations

import argparse
import inspect
import json
import multiprocessing
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time

BATCH, WIDTH = 4, 8          # the tiny tensors every message carries: h float32 [4, 8], y int64 [4]
WAIT_MS = 30_000


class NullStage:
    """What the worker loop needs of a stage, computing nothing: the output is the input."""

    needs_input = False
    modules: list = []

    def __init__(self, rank: int, is_last: bool):
        import torch

        self.layer_ids = [rank]
        self.update_counts = {rank: 0}
        self.last_applied = None
        self.epoch = -1
        self.is_last = is_last
        self._correct = torch.tensor(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def train_step(self, h, y, x=None, step=0, emit=None):
        if emit is not None:
            emit(h)
        self.update_counts[self.layer_ids[0]] += 1
        self.last_applied = (self.epoch, step)
        return _Result(self._correct if self.is_last else None, int(y.shape[0]))

    def eval_step(self, h):
        return h


class _Result:
    def __init__(self, correct, batch_size):
        self.correct, self.batch_size = correct, batch_size

    def loss_values(self):
        return {0: 0.0}


class _Timers:
    """Inclusive seconds and calls per label; `wrap` replaces an attribute with a timed version of itself."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, owner, attribute: str, label: str) -> None:
        inner = getattr(owner, attribute, None)
        if inner is None:
            return
        total, calls, clock = self.total, self.calls, time.perf_counter
        total.setdefault(label, 0.0)
        calls.setdefault(label, 0)

        def timed(*args, **kwargs):
            t0 = clock()
            try:
                return inner(*args, **kwargs)
            finally:
                total[label] += clock() - t0
                calls[label] += 1
        setattr(owner, attribute, timed)


def _instrument(worker, timers: _Timers) -> None:
    """Time the loop's parts by name; a part a tree does not have is simply absent from its breakdown."""
    from auglocal.workers.wire import protocol

    links = worker.links
    timers.wrap(links.inbox, "recv", "receive (incl. decode)")
    timers.wrap(links.inbox, "_decode", "decode")
    timers.wrap(protocol, "validate", "validate")
    timers.wrap(worker, "_poll_control", "control poll")
    timers.wrap(worker.stage, "train_step", "stage step (incl. emit)")
    timers.wrap(worker, "_maybe_heartbeat", "heartbeat check")
    timers.wrap(worker, "_report_step", "metrics (build + send)")
    timers.wrap(worker, "_log", "replay log")
    if links.outbox is not None:
        timers.wrap(links.outbox, "send", "send downstream (incl. encode, credit wait)")
        timers.wrap(links.outbox, "_collect_credits", "credit collect (incl. wait)")
    if getattr(links.inbox, "_pipes", None) is not None:
        timers.wrap(links.inbox._pipes, "give", "credit give")
    timers.wrap(links.results, "send", "report send (incl. encode)")


def _worker_process(spec, breakdown: str | None) -> None:
    import torch
    from auglocal.workers.runtime.worker import Worker
    from auglocal.workers.runtime.worker_links import open_links
    from auglocal.workers.wire.messages import Codec

    torch.set_num_threads(1)
    links = open_links(spec, Codec(spec.run_id, spec.secret))
    worker = Worker(spec, links, stage=NullStage(spec.rank, spec.outbox is None))
    timers = _Timers()
    if breakdown:
        _instrument(worker, timers)
    try:
        worker.run()
    finally:
        links.close()
        if worker.log is not None:
            worker.log.close()
    if breakdown:
        with open(breakdown, "w") as f:
            json.dump({"total": timers.total, "calls": timers.calls}, f)
    os._exit(0)


def _reported_steps(message) -> int:
    """Steps a report accounts for: one per METRICS message, plus its `later` rows where a tree batches them."""
    meta = message.meta if isinstance(message.meta, dict) else vars(message.meta)
    later = meta.get("later")
    return 1 + (len(later) if isinstance(later, list) else 0)


def _main_thread_cpu(process, pid: int) -> float:
    """CPU seconds of the process's main thread (the worker loop), without ZeroMQ's I/O and other threads."""
    for thread in process.threads():
        if thread.id == pid:
            return thread.user_time + thread.system_time
    return 0.0


def run_pipeline(k: int, steps: int, warmup: int, breakdown: bool) -> dict:
    """Feed `warmup + steps` minibatches through K null workers; the measured steps' wall and CPU time."""
    import psutil
    import torch
    from auglocal.workers.links.link import Link
    from auglocal.workers.links.zmq_link import ipc_address
    from auglocal.workers.runtime.spec import WorkerSpec
    from auglocal.workers.wire.messages import Codec, Kind, Message
    from auglocal.workers.wire.protocol import InboxSchema, SeqMeta, TrainMeta, activation_spec

    run_id, secret = secrets.token_hex(6), secrets.token_hex(16)
    codec = Codec(run_id, secret)
    folder = tempfile.mkdtemp(prefix="al-ovh-")
    spec_of = activation_spec((WIDTH,))
    inboxes = [Link(ipc_address(f"w{r}", folder), 2) for r in range(k)]
    results_link = Link(ipc_address("results", folder), 64)
    results = results_link.receiver(codec, "coordinator")
    specs = [WorkerSpec(rank=r, modules=[], config={"batch_size": BATCH}, inbox=inboxes[r],
                        outbox=inboxes[r + 1] if r + 1 < k else None, results=results_link, run_id=run_id,
                        secret=secret, out_dir=folder, coordinator_pid=os.getpid(),
                        schema=InboxSchema(activation=spec_of, image=spec_of),
                        control=Link(ipc_address(f"c{r}", folder), 2), spill_dir=folder)
             for r in range(k)]
    ctx = multiprocessing.get_context("fork")
    files = [os.path.join(folder, f"breakdown{r}.json") if breakdown else None for r in range(k)]
    procs = [ctx.Process(target=_worker_process, args=(s, f)) for s, f in zip(specs, files, strict=True)]
    for p in procs:
        p.start()
    total = warmup + steps
    h, y = torch.randn(BATCH, WIDTH), torch.arange(BATCH)
    try:
        ready = 0
        while ready < k:
            ready += results.recv(WAIT_MS).kind is Kind.READY
        feed = inboxes[0].sender(codec)
        handles = [psutil.Process(p.pid) for p in procs]
        me = psutil.Process()
        fed = reported = 0
        marks: dict = {}
        give_up = time.monotonic() + WAIT_MS / 1000 + total * 0.01
        while reported < total * k:
            if time.monotonic() > give_up:
                raise RuntimeError(f"only {reported} of {total * k} step reports arrived")
            if fed < total:
                try:
                    feed.send(Message(Kind.TRAIN, "coordinator", 0, fed, tensors={"h": h, "y": y},
                                      meta=TrainMeta(fed, fed)), 0)
                    fed += 1
                except TimeoutError:
                    pass
            try:
                message = results.recv(0 if fed < total else 100)
            except TimeoutError:
                continue
            if message.kind is Kind.METRICS:
                reported += _reported_steps(message)
            elif message.kind is Kind.ERROR:
                raise RuntimeError(f"a worker failed: {message.meta}")
            if "t0" not in marks and reported >= warmup * k:
                marks["t0"] = time.perf_counter()
                marks["cpu0"] = [sum(x.cpu_times()[:2]) for x in handles]
                marks["main0"] = [_main_thread_cpu(x, p.pid) for x, p in zip(handles, procs, strict=True)]
                marks["me0"] = sum(me.cpu_times()[:2])
        wall = time.perf_counter() - marks["t0"]
        cpu = [sum(x.cpu_times()[:2]) - c for x, c in zip(handles, marks["cpu0"], strict=True)]
        main = [_main_thread_cpu(x, p.pid) - c for x, p, c in zip(handles, procs, marks["main0"], strict=True)]
        driver = sum(me.cpu_times()[:2]) - marks["me0"]
        feed.send(Message(Kind.STOP, "coordinator", 0, total, meta=SeqMeta(total)), WAIT_MS)
        stopped = 0
        while stopped < k:
            message = results.recv(WAIT_MS)
            stopped += message.kind is Kind.STOPPED
        for p in procs:
            p.join(WAIT_MS / 1000)
        feed.close()
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        results.close()
    out = {"k": k, "steps": steps, "step_us": wall / steps * 1e6,
           "worker_cpu_us": [c / steps * 1e6 for c in cpu], "driver_cpu_us": driver / steps * 1e6,
           "worker_main_thread_cpu_us": [c / steps * 1e6 for c in main]}
    if breakdown:
        parts = []
        for name in files:
            with open(name) as f:
                got = json.load(f)
            parts.append({label: t / total * 1e6 for label, t in got["total"].items()})
        out["breakdown_us"] = parts
    shutil.rmtree(folder, ignore_errors=True)
    return out


def _plain_peer(address: str, folder: str) -> None:
    import zmq

    context = zmq.Context()
    inbox = context.socket(zmq.ROUTER)
    inbox.bind(f"ipc://{folder}/plain-peer.sock")
    outbox = context.socket(zmq.DEALER)
    outbox.connect(address)
    outbox.send(inbox.getsockopt(zmq.LAST_ENDPOINT))
    while True:
        _, *frames = inbox.recv_multipart(copy=False)
        if frames[0].bytes == b"stop":
            break
        outbox.send_multipart(frames, copy=False)
    context.destroy(linger=0)
    os._exit(0)


def plain_hop(round_trips: int) -> float:
    """Bare pyzmq's 16 KB one-way hop (half a ping-pong, median): ROUTER in, DEALER out, no codec or credits."""
    import torch
    import zmq

    folder = tempfile.mkdtemp(prefix="al-ovh-")
    context = zmq.Context()
    inbox = context.socket(zmq.ROUTER)
    inbox.bind(f"ipc://{folder}/plain.sock")
    child = multiprocessing.get_context("fork").Process(
        target=_plain_peer, args=(inbox.getsockopt(zmq.LAST_ENDPOINT).decode(), folder))
    child.start()
    try:
        _, address = inbox.recv_multipart()
        outbox = context.socket(zmq.DEALER)
        outbox.connect(address.decode())
        small = torch.randn(4096).numpy()
        one_way = []
        for _ in range(round_trips + round_trips // 10):
            start = time.perf_counter()
            outbox.send_multipart([b"echo", small], copy=False)
            inbox.recv_multipart(copy=False)
            one_way.append((time.perf_counter() - start) / 2)
        outbox.send(b"stop")
        child.join(10)
    finally:
        if child.is_alive():
            child.kill()
        context.destroy(linger=0)
        shutil.rmtree(folder, ignore_errors=True)
    return statistics.median(one_way[round_trips // 10:]) * 1e6


def _link_peer(parent: str, folder: str, run_id: str, secret: str) -> None:
    import torch
    from auglocal.workers.links.link import Link
    from auglocal.workers.wire.messages import Codec, Kind, Message

    torch.set_num_threads(1)
    codec = Codec(run_id, secret)
    with Link(f"ipc://{folder}/peer.sock", 2).receiver(codec, "peer") as inbox, \
            Link(parent, 2).sender(codec) as outbox:
        outbox.send(Message(Kind.READY, "peer"), WAIT_MS)
        while True:
            message = inbox.recv(WAIT_MS)
            if message.kind is Kind.STOP:
                break
            outbox.send(Message(Kind.TRAIN, "peer", step=message.step, tensors=message.tensors), WAIT_MS)
        outbox.wait_all(WAIT_MS)
    os._exit(0)


def link_hop(round_trips: int) -> float:
    """The ipc link's 16 KB one-way hop (half a ping-pong, median): codec, checks and credits both ways."""
    import torch
    from auglocal.workers.links.link import Link
    from auglocal.workers.wire.messages import Codec, Kind, Message

    run_id, secret = secrets.token_hex(6), secrets.token_hex(16)
    codec = Codec(run_id, secret)
    folder = tempfile.mkdtemp(prefix="al-ovh-")
    inbox = Link(f"ipc://{folder}/parent.sock", 2).receiver(codec, "parent")
    child = multiprocessing.get_context("fork").Process(
        target=_link_peer, args=(inbox.address, folder, run_id, secret))
    child.start()
    try:
        inbox.recv(WAIT_MS)
        outbox = Link(f"ipc://{folder}/peer.sock", 2).sender(codec)
        tensor = torch.randn(4096)
        one_way = []
        for step in range(round_trips + round_trips // 10):
            start = time.perf_counter()
            outbox.send(Message(Kind.TRAIN, "parent", step=step, tensors={"x": tensor}), WAIT_MS)
            inbox.recv(WAIT_MS)
            one_way.append((time.perf_counter() - start) / 2)
        outbox.send(Message(Kind.STOP, "parent"), WAIT_MS)
        outbox.wait_all(WAIT_MS)
        child.join(10)
        outbox.close()
    finally:
        if child.is_alive():
            child.kill()
        inbox.close()
        shutil.rmtree(folder, ignore_errors=True)
    return statistics.median(one_way[round_trips // 10:]) * 1e6


def log_append(reps: int) -> dict:
    """The worker's `_log` path for one 8 MB message (its DeferredLog's append: whatever this tree does to keep
    a sent message for replay) against one 8 MB memory copy (into a buffer already
    allocated, so no page faults: the cheapest copy, the strictest yardstick), medians over `reps`, in one process."""
    import torch
    from auglocal.workers.runtime.device_log import DeferredLog
    from auglocal.workers.runtime.replay_log import ReplayLog
    from auglocal.workers.wire.messages import Codec, Kind, Message
    from auglocal.workers.wire.protocol import TrainMeta

    torch.set_num_threads(1)
    folder = tempfile.mkdtemp(prefix="al-ovh-")
    codec = Codec("bench", secrets.token_hex(16))
    h, y = torch.randn(2 * 1024 * 1024), torch.arange(256)      # 8 MiB of activation, and labels
    log = DeferredLog(ReplayLog(1 << 40, folder, "bench"), codec)
    # A tree whose log takes the frames the send used gets them, encoded before the clock starts (the send's
    # work, not the log's); an older tree's log encodes the message itself, as its worker's `_log` did.
    by_frames = "frames" in inspect.signature(log.append).parameters
    target = torch.empty_like(h)
    settle = getattr(log.log, "_settled", lambda: None)
    append, copy, behind = [], [], []
    for seq in range(reps + 3):
        message = Message(Kind.TRAIN, "worker0", 0, seq, 1, {"h": h, "y": y}, TrainMeta(seq, seq))
        sent = codec.encode(message) if by_frames else None
        t0 = time.perf_counter()
        if by_frames:
            log.append(seq, message, sent)
        else:
            log.append(seq, message)
        t1 = time.perf_counter()
        target.copy_(h)
        t2 = time.perf_counter()
        settle()           # a tree with a background thread: let it finish this entry's checksum before the next
        t3 = time.perf_counter()
        if seq >= 3:
            append.append(t1 - t0)
            copy.append(t2 - t1)
            behind.append(t3 - t2)
        if seq % 8 == 7:
            log.prune(seq)     # a commit: keeps memory bounded, as checkpoints do
    log.close()
    shutil.rmtree(folder, ignore_errors=True)
    return {"append_us": statistics.median(append) * 1e6, "copy_us": statistics.median(copy) * 1e6,
            "thread_us": statistics.median(behind) * 1e6}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("pipeline", "hop", "log"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--round-trips", type=int, default=2000)
    args = parser.parse_args(argv)
    import auglocal.workers

    tree = os.path.dirname(os.path.dirname(os.path.abspath(auglocal.workers.__file__)))
    if args.what == "pipeline":
        out = run_pipeline(args.workers, args.steps, args.warmup, args.breakdown)
    elif args.what == "log":
        out = log_append(args.round_trips)
    else:
        out = {"plain_us": plain_hop(args.round_trips), "link_us": link_hop(args.round_trips)}
    out["tree"] = tree
    print(json.dumps(out))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

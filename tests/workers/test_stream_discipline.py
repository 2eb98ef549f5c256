"""The stream-discipline checker (tests/workers/stream_check.py) on planted mistakes and on the real paths.

The checker must fail a consumer that reads another stream's tensor without waiting, and must pass what the
engine really does: thread workers (workers/runtime/host.py's threads and streams, workers/links/threadlink.py's
handoff),
the cuda-ipc path over the CPU IPC double, and the replay log's side-stream copies (workers/runtime/device_log.py).
Each real path is also run with its wait planted away, to show the check is not vacuous there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest
import torch
from auglocal.engine.config import RunConfig, resolve
from auglocal.engine.data import build_dataset
from auglocal.workers.links import streams
from auglocal.workers.links.link import Link
from auglocal.workers.links.memlink import MemoryLink
from auglocal.workers.links.paths.cuda_ipc import CudaIpcPath
from auglocal.workers.links.paths.oob_link import OobReceiver, OobSender
from auglocal.workers.links.threadlink import ThreadLink
from auglocal.workers.links.zmq_link import ipc_address
from auglocal.workers.runtime import host
from auglocal.workers.runtime.device_log import DeferredLog
from auglocal.workers.runtime.replay_log import ReplayLog
from auglocal.workers.runtime.worker import WorkerLinks, WorkerSpec
from auglocal.workers.wire.messages import Codec, Kind, Message
from auglocal.workers.wire.protocol import InboxSchema, Route, SeqMeta, TrainMeta, activation_spec, validate

from tests.workers.ipc_double import CpuIpcMemory
from tests.workers.stream_check import CpuStreams, StreamChecker

RUN, SECRET, SIZE = "run-streams", "s3cret", 8
CPU = torch.device("cpu")


@pytest.fixture
def checked():
    """CpuStreams with a checker, installed for the whole process (the engine's stream seam uses it)."""
    checker = StreamChecker()
    ops = CpuStreams(checker)
    with streams.installed(ops):
        yield ops, checker


def no_wait(stream, event) -> None:
    """A planted bug: the consumer's stream does not wait for the producer's event."""


# --- planted, by hand ---------------------------------------------------------------------------------------
def test_a_read_without_a_wait_fails_and_with_one_passes(checked):
    ops, checker = checked
    producer, consumer = ops.new(CPU), ops.new(CPU)
    with ops.using(producer):
        x = torch.ones(64) * 2
        event = ops.event()
        ops.record(event, producer)
    with ops.using(consumer):
        _ = x + 1                        # no wait: a race on a GPU
    assert len(checker.violations) == 1 and "without a wait" in checker.violations[0]
    checker.violations.clear()
    with ops.using(consumer):
        ops.wait_event(consumer, event)
        _ = x + 1
    checker.check()
    assert checker.cross_stream_uses == 2


def test_memory_freed_while_another_stream_used_it_needs_record_stream(checked):
    ops, checker = checked
    producer, consumer = ops.new(CPU), ops.new(CPU)
    for record in (False, True):
        with ops.using(producer):
            x = torch.ones(64) * 2
            event = ops.event()
            ops.record(event, producer)
        with ops.using(consumer):
            ops.wait_event(consumer, event)
            _ = x + 1
            if record:
                ops.record_stream(x, consumer)
        del x                            # the producer drops it: its stream may reuse the block at once
        assert bool(checker.violations) is not record, checker.violations
        checker.violations.clear()


def test_a_view_touches_no_memory_but_reading_through_it_does(checked):
    ops, checker = checked
    producer, consumer = ops.new(CPU), ops.new(CPU)
    with ops.using(producer):
        x = torch.ones(64) * 2
    with ops.using(consumer):
        part = x[8:16]                   # opening a view (cuda-ipc opens a slot so) launches no kernel
    checker.check()
    checker.closed = False
    with ops.using(consumer):
        _ = part + 1
    assert len(checker.violations) == 1 and "without a wait" in checker.violations[0]


def test_a_host_buffer_is_read_only_after_the_host_waited_for_its_copy(checked):
    ops, checker = checked
    compute, side = ops.new(CPU), ops.new(CPU)
    for wait in (False, True):
        with ops.using(compute):
            x = torch.ones(64) * 2
            ops.wait_stream(side, compute)
            buffer = ops.host_buffer(x)  # pinned memory: allocating it is no write of the compute stream
            ops.copy_async(buffer, x, side)
            ops.record_stream(x, side)
            done = ops.event()
            ops.record(done, side)
            if wait:
                ops.wait_host(done)
            _ = buffer + 1               # the host reads the copied bytes
        del x, buffer
        assert bool(checker.violations) is not wait, checker.violations
        checker.violations.clear()


# --- thread workers: host.py's threads and streams, threadlink's handoff ----------------------------------
def pipeline_specs(tmp: str) -> list[WorkerSpec]:
    data = build_dataset("synthetic", seed=1, input_size=SIZE, num_classes=4, train_size=16, test_size=8)
    cfg = RunConfig(model="resnet20", rule="auglocal", d=3, dataset="synthetic", epochs=1, batch_size=4,
                    lr=0.05, seed=3, input_size=SIZE, num_classes=4)
    config = resolve(cfg, data).to_dict()
    unused = Link("ipc:///nonexistent")
    schema = InboxSchema(activation_spec((3, SIZE, SIZE)), activation_spec((3, SIZE, SIZE)))
    return [WorkerSpec(rank=r, modules=mods, config=config, inbox=unused, outbox=unused if r == 0 else None,
                       results=unused, run_id=RUN, secret=SECRET, out_dir=tmp, coordinator_pid=os.getpid(),
                       schema=schema if r == 0 else None, replay_log=False)
            for r, mods in enumerate([[0, 1, 2, 3], [4, 5, 6, 7]])]


def run_thread_pipeline(ops, tmp: str, monkeypatch) -> list:
    """Two thread workers as a host runs them (build_workers, then host._Thread: own stream each), fed two
    minibatches and the stop marker; returns the reports."""
    crashes = []
    monkeypatch.setattr(host, "crash", lambda links, name, err: crashes.append(f"{name}: {err!r}"))
    codec = Codec(RUN, SECRET)
    inbox, results = MemoryLink(codec, "inbox", window=8), MemoryLink(codec, "results", window=64)
    middle = ThreadLink(codec, "worker1")
    links = [WorkerLinks(inbox, middle.sender(), results.sender()), WorkerLinks(middle, None, results.sender())]
    with ops.watching():                 # the weights are written on this thread's (default) stream
        workers = host.build_workers(pipeline_specs(tmp), links)
    threads = [host._Thread(w) for w in workers]
    for t in threads:
        t.start()
    feed, g = inbox.sender(), torch.Generator().manual_seed(0)
    for step in range(2):
        tensors = {"h": torch.randn(4, 3, SIZE, SIZE, generator=g), "y": torch.arange(4) % 4}
        feed.send(Message(Kind.TRAIN, "coordinator", 0, step, tensors=tensors, meta=TrainMeta(step, step)), 5000)
    feed.send(Message(Kind.STOP, "coordinator", meta=SeqMeta(2)), 5000)
    reports, deadline = [], time.monotonic() + 120
    while sum(r.kind is Kind.STOPPED for r in reports) < len(threads) and time.monotonic() < deadline:
        if results.pending():            # read as the coordinator does: a worker stops once its reports are read
            reports.append(validate(results.recv(0), Route.REPORT))
        else:
            time.sleep(0.005)
    for t in threads:
        t.join(30)
    assert not crashes, crashes
    assert not any(t.is_alive() for t in threads), "a worker did not stop"
    return [r for r in reports if r.kind is not Kind.HEARTBEAT]


def test_thread_workers_keep_the_stream_discipline(checked, tmp_path, monkeypatch):
    ops, checker = checked
    reports = run_thread_pipeline(ops, str(tmp_path), monkeypatch)
    assert sum(r.kind is Kind.METRICS for r in reports) == 4 and sum(r.kind is Kind.STOPPED for r in reports) == 2
    checker.check()
    assert checker.cross_stream_uses > 0     # the consumer really read the producer's tensors


def test_thread_workers_without_the_consumers_wait_fail_the_checker(checked, tmp_path, monkeypatch):
    ops, checker = checked
    monkeypatch.setattr(ops, "wait_event", no_wait)
    run_thread_pipeline(ops, str(tmp_path), monkeypatch)
    with pytest.raises(AssertionError, match="without a wait"):
        checker.check()


# --- cuda-ipc over the IPC double ------------------------------------------------------------------------
@pytest.mark.parametrize("planted", [False, True])
def test_cuda_ipc_keeps_the_stream_discipline(checked, planted, monkeypatch):
    ops, checker = checked
    if planted:
        monkeypatch.setattr(ops, "wait_event", no_wait)
    directory = tempfile.mkdtemp(prefix="al-ipc-streams-")
    codec = Codec(RUN, SECRET)
    sending, receiving = ops.new(CPU), ops.new(CPU)
    rx = OobReceiver(ipc_address("in", directory), codec, "rx",
                     CudaIpcPath(2, True, memory=CpuIpcMemory(directory, streams=ops)))
    memory = CpuIpcMemory(directory, streams=ops)
    tx = OobSender(rx.address, codec, CudaIpcPath(2, False, memory=memory))
    try:
        for step in range(4):            # one at a time: the checker tracks the segment as one block
            with ops.using(sending):
                x = torch.arange(64.0) * step
                tx.send(Message(Kind.TRAIN, "tx", step=step, tensors={"x": x}), 5000)
            with ops.using(receiving):
                got = rx.recv(5000)
            assert torch.equal(got.tensors["x"], x)     # unwatched: the test, not the receiver, reads x
    finally:
        tx.close()
        rx.close()
        memory.close()
        shutil.rmtree(directory, ignore_errors=True)
    if planted:
        with pytest.raises(AssertionError, match="without a wait"):
            checker.check()
    else:
        checker.check()
        assert checker.cross_stream_uses > 0


# --- the replay log's side-stream copies -----------------------------------------------------------------
@pytest.mark.parametrize("planted", [False, True])
def test_the_replay_logs_side_stream_copy_waits_for_the_compute_stream(checked, planted, monkeypatch):
    ops, checker = checked
    if planted:
        monkeypatch.setattr(ops, "wait_stream", lambda stream, other: None)
    codec = Codec(RUN, SECRET)
    log = DeferredLog(ReplayLog(1 << 20), codec)
    compute = ops.new(CPU)
    sent = []
    with ops.using(compute):
        for seq in range(3):
            h = torch.randn(4, 8) * (seq + 1)
            message = Message(Kind.TRAIN, "w0", 0, seq, tensors={"h": h, "y": torch.arange(4)}, meta=TrainMeta(seq))
            log.append(seq, message)
            sent.append(message)
        log.append(3, Message(Kind.STOP, "w0", meta=SeqMeta(3)))
    replayed = [codec.decode(frames) for frames in log.since(-1)]
    assert [m.kind for m in replayed] == [Kind.TRAIN] * 3 + [Kind.STOP]
    for back, message in zip(replayed, sent, strict=False):
        assert torch.equal(back.tensors["h"], message.tensors["h"])
    log.close()
    if planted:
        with pytest.raises(AssertionError, match="without a wait"):
            checker.check()
    else:
        checker.check()

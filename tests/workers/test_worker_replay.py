"""One-worker recovery inside a worker, through in-memory links: sequence numbers, dropping what a restarted
upstream resends, relinking and replaying the log, pruning it at commits, and staying (held) after the stop
marker until the coordinator releases it."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from auglocal.engine.config import RunConfig, resolve
from auglocal.engine.data import build_dataset
from auglocal.workers.links.link import Link
from auglocal.workers.links.memlink import MemoryLink
from auglocal.workers.runtime.worker import CoordinatorGone, Worker, WorkerError, WorkerLinks, WorkerSpec
from auglocal.workers.wire.messages import Codec, Kind, Message
from auglocal.workers.wire.protocol import (
    CommittedMeta,
    ExpectReplayMeta,
    InboxSchema,
    NoMeta,
    RelinkMeta,
    Route,
    SeqMeta,
    TrainMeta,
    activation_spec,
    validate,
)

RUN, SECRET = "run-replay", "s3cret"
SIZE = 8


@pytest.fixture(scope="module")
def config() -> dict:
    data = build_dataset("synthetic", seed=1, input_size=SIZE, num_classes=4, train_size=16, test_size=8)
    cfg = RunConfig(model="resnet20", rule="auglocal", d=3, dataset="synthetic", epochs=1, batch_size=4,
                    lr=0.05, seed=3, input_size=SIZE, num_classes=4)
    return resolve(cfg, data).to_dict()


class Harness:
    """Worker 0 of two with a control inbox; `relinked` holds the fresh downstream inboxes it opened."""

    def __init__(self, config: dict, tmp_path, replay_log_bytes: int = 1 << 20, hold_after_stop: bool = False):
        self.codec = Codec(RUN, SECRET)
        self.inbox = MemoryLink(self.codec, "inbox", window=16)
        self.downstream = MemoryLink(self.codec, "next", window=16)
        self.results = MemoryLink(self.codec, "results", window=256)
        self.control = MemoryLink(self.codec, "control", window=8)
        self.relinked: dict[str, MemoryLink] = {}
        unused = Link("ipc:///nonexistent")
        spec = WorkerSpec(rank=0, modules=[0, 1], config=config, inbox=unused, outbox=unused, results=unused,
                          run_id=RUN, secret=SECRET, out_dir=str(tmp_path), coordinator_pid=0,
                          schema=InboxSchema(activation_spec((3, SIZE, SIZE)), activation_spec((3, SIZE, SIZE))),
                          heartbeat_s=60.0, replay_log_bytes=replay_log_bytes, spill_dir=str(tmp_path / "spill"),
                          hold_after_stop=hold_after_stop)
        links = WorkerLinks(self.inbox, self.downstream.sender(), self.results.sender(), self.control,
                            self.reopen)
        self.coordinator_alive = True
        self.worker = Worker(spec, links, poll_ms=50, coordinator_alive=lambda: self.coordinator_alive)
        self.feed = self.inbox.sender()
        self.coordinator = self.control.sender()

    def reopen(self, address: str):
        self.relinked[address] = MemoryLink(self.codec, address, window=16)
        return self.relinked[address].sender()

    def train(self, seq: int, sender: str = "coordinator") -> Message:
        gen = torch.Generator().manual_seed(seq)
        x = torch.randn(4, 3, SIZE, SIZE, generator=gen)
        return Message(Kind.TRAIN, sender, 0, seq, tensors={"h": x, "y": torch.arange(4) % 4},
                       meta=TrainMeta(seq, seq))

    def feed_and_handle(self, *messages: Message) -> list[Message]:
        """Send `messages`, then let the worker take (and handle) messages until its inbox is empty."""
        for m in messages:
            self.feed.send(m, 1000)
        handled = []
        while self.inbox.pending():
            msg = self.worker._recv()
            self.worker.handlers[msg.kind](msg)
            handled.append(msg)
        return handled

    def tell(self, kind: Kind, meta) -> None:
        self.coordinator.send(Message(kind, "coordinator", meta=meta), 1000)
        self.worker._poll_control()

    def drained(self, link: MemoryLink) -> list[Message]:
        route = Route.REPORT if link is self.results else Route.DOWN
        out = []
        while link.pending():
            out.append(validate(link.recv(0), route))
        return out


def test_outputs_carry_the_input_seq(config, tmp_path):
    h = Harness(config, tmp_path)
    h.feed_and_handle(h.train(0), h.train(1))
    assert [m.meta.seq for m in h.drained(h.downstream)] == [0, 1]
    assert h.worker.last_seq == 1


def test_a_repeat_is_an_error_unless_a_replay_was_announced(config, tmp_path):
    h = Harness(config, tmp_path)
    h.feed_and_handle(h.train(0), h.train(1))
    with pytest.raises(WorkerError, match="seq 1 from coordinator arrived after seq 1: it would be handled twice"):
        h.feed_and_handle(h.train(1))


def test_a_gap_is_an_error(config, tmp_path):
    h = Harness(config, tmp_path)
    h.feed_and_handle(h.train(0))
    with pytest.raises(WorkerError, match="rejected a message: train seq 3 .* follows seq 0: 2 message"):
        h.feed_and_handle(h.train(3))


def test_announced_repeats_are_dropped_then_the_new_ones_handled(config, tmp_path):
    h = Harness(config, tmp_path)
    h.feed_and_handle(h.train(0), h.train(1), h.train(2))
    before = dict(h.worker.stage.update_counts)
    h.drained(h.downstream)
    h.drained(h.results)
    h.tell(Kind.EXPECT_REPLAY, ExpectReplayMeta("worker9.1"))
    # a repeat from another sender than the announced one is still an error; from it, it is dropped
    handled = h.feed_and_handle(h.train(1, "worker9.1"), h.train(2, "worker9.1"), h.train(3, "worker9.1"))
    assert [m.meta.seq for m in handled] == [3]
    assert h.worker.dropped_repeats == 2
    assert {k: v - before[k] for k, v in h.worker.stage.update_counts.items()} == {0: 1, 1: 1}
    assert [m.meta.seq for m in h.drained(h.downstream)] == [3]
    assert [m.step for m in h.drained(h.results) if m.kind is Kind.METRICS] == [3]
    assert h.worker.replay_from is None                    # caught up: repeats are errors again
    with pytest.raises(WorkerError, match="handled twice"):
        h.feed_and_handle(h.train(3, "worker9.1"))


def test_relink_resends_the_log_after_the_checkpoint_byte_for_byte(config, tmp_path):
    h = Harness(config, tmp_path, replay_log_bytes=3000)     # small: most entries spill to files
    h.feed_and_handle(*(h.train(s) for s in range(4)))
    h.feed_and_handle(Message(Kind.EVAL, "coordinator", 0, 0,
                              tensors={"h": torch.ones(4, 3, SIZE, SIZE), "y": torch.zeros(4, dtype=torch.long)},
                              meta=SeqMeta(4)))
    sent = h.drained(h.downstream)
    assert h.worker.log.disk_bytes > 0
    h.tell(Kind.COMMITTED, CommittedMeta(1, 1))             # a checkpoint after seq 1 committed
    h.tell(Kind.RELINK, RelinkMeta("fresh", 1))
    replayed = h.drained(h.relinked["fresh"])
    assert [m.meta.seq for m in replayed] == [2, 3, 4]
    for a, b in zip(sent[2:], replayed, strict=True):
        assert (a.kind, a.epoch, a.step, a.meta) == (b.kind, b.epoch, b.step, b.meta)
        assert sorted(a.tensors) == sorted(b.tensors)
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    # later output goes to the fresh link, and the log goes on
    h.feed_and_handle(h.train(5))
    assert [m.meta.seq for m in h.drained(h.relinked["fresh"])] == [5]
    assert not h.downstream.pending()


def test_a_replay_from_before_the_pruned_part_fails_the_worker(config, tmp_path):
    h = Harness(config, tmp_path)
    h.feed_and_handle(h.train(0), h.train(1), h.train(2))
    h.tell(Kind.COMMITTED, CommittedMeta(1, 1))
    with pytest.raises(WorkerError, match="cannot replay"):
        h.tell(Kind.RELINK, RelinkMeta("fresh", 0))


class Running:
    """The harness's worker running `run()` in a thread, as in its process; `error` is what ended it."""

    def __init__(self, h: Harness):
        self.h, self.error = h, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.h.worker.run()
        except Exception as err:   # noqa: BLE001 - the test asserts on it
            self.error = err

    def receive(self, link: MemoryLink, count: int, route: Route = Route.DOWN) -> list[Message]:
        """The next `count` messages on `link` (the worker's downstream, a relinked one, or its reports)."""
        return [validate(link.recv(10_000), route) for _ in range(count)]

    def reports_until(self, kind: Kind) -> None:
        while validate(self.h.results.recv(10_000), Route.REPORT).kind is not kind:
            pass

    def tell(self, kind: Kind, meta) -> None:
        self.h.coordinator.send(Message(kind, "coordinator", meta=meta), 1000)


def stop(seq: int, sender: str = "coordinator") -> Message:
    return Message(Kind.STOP, sender, meta=SeqMeta(seq))


def run_to_stop(h: Harness) -> Running:
    """Feed two minibatches and the stop marker to a running worker; return once it has reported stopped."""
    running = Running(h)
    for m in (h.train(0), h.train(1), stop(2)):
        h.feed.send(m, 1000)
    assert [m.kind for m in running.receive(h.downstream, 3)] == [Kind.TRAIN, Kind.TRAIN, Kind.STOP]
    running.reports_until(Kind.STOPPED)
    return running


def test_a_held_worker_replays_up_to_the_stop_marker_then_exits_when_released(config, tmp_path):
    h = Harness(config, tmp_path, hold_after_stop=True)
    running = run_to_stop(h)
    time.sleep(0.2)
    assert running.thread.is_alive()                         # held: its log and links are still there
    running.tell(Kind.RELINK, RelinkMeta("fresh", 0))        # its downstream restarted from seq 0's checkpoint
    while "fresh" not in h.relinked:
        time.sleep(0.01)
    replayed = running.receive(h.relinked["fresh"], 2)
    assert [(m.kind, m.meta.seq) for m in replayed] == [(Kind.TRAIN, 1), (Kind.STOP, 2)]
    running.tell(Kind.RELEASE, NoMeta())
    running.thread.join(10)
    assert not running.thread.is_alive() and running.error is None


def test_a_held_worker_drops_a_restarted_upstreams_repeats_stop_marker_included(config, tmp_path):
    h = Harness(config, tmp_path, hold_after_stop=True)
    running = run_to_stop(h)
    running.tell(Kind.EXPECT_REPLAY, ExpectReplayMeta("worker9.1"))
    time.sleep(0.2)                                           # the worker reads its control inbox every 50 ms
    for m in (h.train(1, "worker9.1"), stop(2, "worker9.1")):
        h.feed.send(m, 1000)
    deadline = time.monotonic() + 10                          # consumed (the credit comes back first), then counted
    while h.worker.dropped_repeats < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert h.worker.dropped_repeats == 2 and not h.downstream.pending()
    assert running.thread.is_alive()
    h.feed.send(h.train(3), 1000)                             # nothing new may follow the stop marker
    running.thread.join(10)
    assert isinstance(running.error, WorkerError) and "arrived after the stop marker" in str(running.error)


def test_a_held_worker_exits_when_its_coordinator_is_gone(config, tmp_path):
    h = Harness(config, tmp_path, hold_after_stop=True)
    running = run_to_stop(h)
    h.coordinator_alive = False
    running.thread.join(10)
    assert isinstance(running.error, CoordinatorGone)


def test_a_worker_without_hold_exits_after_the_stop_marker(config, tmp_path):
    running = run_to_stop(Harness(config, tmp_path))
    running.thread.join(10)
    assert not running.thread.is_alive() and running.error is None

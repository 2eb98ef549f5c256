"""The worker driven in this process through in-memory links: protocol guards, strangers, heartbeats."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from auglocal.engine.config import RunConfig, resolve
from auglocal.engine.data import build_dataset
from auglocal.workers.links.link import Link
from auglocal.workers.links.memlink import MemoryLink
from auglocal.workers.runtime.worker import Worker, WorkerError, WorkerLinks, WorkerSpec
from auglocal.workers.wire.messages import Codec, Kind, Message
from auglocal.workers.wire.protocol import (
    PROTOCOL,
    CheckpointMeta,
    InboxSchema,
    MetricsMeta,
    Route,
    SeqMeta,
    TrainMeta,
    activation_spec,
    kinds_on,
    validate,
)

from tests.workers.wire_headers import with_header

RUN, SECRET = "run-test", "s3cret"
SIZE = 8


@pytest.fixture(scope="module")
def config() -> dict:
    data = build_dataset("synthetic", seed=1, input_size=SIZE, num_classes=4, train_size=16, test_size=8)
    cfg = RunConfig(model="resnet20", rule="auglocal", d=3, dataset="synthetic", epochs=1, batch_size=4,
                    lr=0.05, seed=3, input_size=SIZE, num_classes=4)
    return resolve(cfg, data).to_dict()


class Harness:
    """Worker 0 of two (modules 0..1), its inbox, the next worker's inbox and the coordinator's results."""

    def __init__(self, config: dict, tmp_path, *, heartbeat_s: float = 60.0, fault: dict | None = None,
                 ship_layers: bool = False):
        self.codec = Codec(RUN, SECRET)
        self.inbox = MemoryLink(self.codec, "inbox", window=8)
        self.downstream = MemoryLink(self.codec, "next")
        self.results = MemoryLink(self.codec, "results", window=64)
        unused = Link("ipc:///nonexistent")
        spec = WorkerSpec(rank=0, modules=[0, 1], config=config, inbox=unused, outbox=unused, results=unused,
                          run_id=RUN, secret=SECRET, out_dir=str(tmp_path), coordinator_pid=0,
                          schema=InboxSchema(activation_spec((3, SIZE, SIZE)), activation_spec((3, SIZE, SIZE))),
                          heartbeat_s=heartbeat_s, fault=fault, ship_layers=ship_layers)
        links = WorkerLinks(self.inbox, self.downstream.sender(), self.results.sender())
        self.worker = Worker(spec, links, poll_ms=50)
        self.feed = self.inbox.sender()

    def train(self, step: int, epoch: int = 0) -> Message:
        x = torch.randn(4, 3, SIZE, SIZE)
        return Message(Kind.TRAIN, "coordinator", epoch, step, tensors={"h": x, "y": torch.arange(4) % 4},
                       meta=TrainMeta(step))

    def reports(self) -> list[Message]:
        out = []
        while self.results.pending():
            out.append(validate(self.results.recv(0), Route.REPORT))
        return out


def test_every_kind_has_exactly_one_handler_on_its_receiving_side(config, tmp_path):
    """The worker handles exactly the kinds that travel down the pipeline; the coordinator (test_coordinator)
    exactly the reports. Together with CREDIT (transport-internal) that is every kind there is."""
    h = Harness(config, tmp_path)
    assert set(h.worker.handlers) == kinds_on(Route.DOWN)
    assert kinds_on(Route.DOWN) | kinds_on(Route.REPORT) | {Kind.CREDIT} == set(Kind)
    assert not kinds_on(Route.DOWN) & kinds_on(Route.REPORT)
    assert set(PROTOCOL) == set(Kind) - {Kind.CREDIT}


def test_training_step_sends_output_downstream_and_reports_metrics(config, tmp_path):
    h = Harness(config, tmp_path)
    h.feed.send(h.train(0), 1000)
    h.worker.handlers[Kind.TRAIN](h.worker._recv())
    out = validate(h.downstream.recv(0), Route.DOWN)
    assert out.kind is Kind.TRAIN and out.meta == TrainMeta(0) and out.tensors["h"].shape == (4, 16, SIZE, SIZE)
    (metrics,) = h.reports()
    assert metrics.kind is Kind.METRICS and metrics.sender == "worker0"
    assert isinstance(metrics.meta, MetricsMeta) and sorted(metrics.meta.losses) == ["0", "1"]


def test_a_minibatch_applied_twice_is_refused(config, tmp_path):
    h = Harness(config, tmp_path)
    for _ in range(2):
        h.feed.send(h.train(0), 1000)
    h.worker.handlers[Kind.TRAIN](h.worker._recv())
    with pytest.raises(WorkerError, match="applied twice"):
        h.worker.handlers[Kind.TRAIN](h.worker._recv())
    error = h.reports()[-1]
    assert error.kind is Kind.ERROR and "applied twice" in error.meta.detail and error.meta.restartable
    assert h.worker.stage.update_counts == {0: 1, 1: 1}


@pytest.mark.parametrize("bad", ["report kind", "unknown kind", "missing tensor", "wrong shape", "bad meta"])
def test_a_peer_message_that_breaks_the_protocol_is_a_failure(bad, config, tmp_path):
    """A message with this run's secret that is not what the table says: ERROR report, the worker stops."""
    h = Harness(config, tmp_path)
    message = h.train(0)
    if bad == "report kind":
        message = Message(Kind.METRICS, "coordinator", meta=MetricsMeta(0.1, 4, {}, None))
    elif bad == "missing tensor":
        del message.tensors["y"]
    elif bad == "wrong shape":
        message.tensors["h"] = torch.zeros(4, 3, SIZE + 1, SIZE)
    elif bad == "bad meta":
        message.meta = {"g": "zero"}
    frames = h.codec.encode(message)
    if bad == "unknown kind":
        frames = with_header(frames, kind="gossip")
    h.inbox.inject([bytes(f) for f in frames])
    with pytest.raises(WorkerError):
        h.worker._recv()
    (error,) = h.reports()
    assert error.kind is Kind.ERROR and "rejected a message" in error.meta.detail


def test_a_message_lost_on_the_link_is_a_failure(config, tmp_path):
    """Minibatch 1 never arrives (e.g. its header was corrupted and dropped as a stranger's): the next
    message's sequence number shows the gap at once, before anything is trained on it."""
    h = Harness(config, tmp_path)
    first = h.train(0)
    first.meta = TrainMeta(0, 0)
    h.feed.send(first, 1000)
    h.worker.handlers[Kind.TRAIN](h.worker._recv())
    h.feed.send(Message(Kind.CHECKPOINT, "coordinator", meta=CheckpointMeta(1, str(tmp_path), 2)), 1000)
    with pytest.raises(WorkerError, match="1 message.*lost"):
        h.worker._recv()
    assert h.worker.stage.update_counts == {0: 1, 1: 1}
    assert not (tmp_path / "layer_000.pt").exists()


def test_strangers_are_reported_and_dropped(config, tmp_path):
    """Random bytes and another run's header are counted (REJECTED to the coordinator), never a failure."""
    h = Harness(config, tmp_path)
    h.inbox.inject([b"\x00\x01 random bytes"])
    h.inbox.inject([bytes(f) for f in Codec("other-run", "other").encode(h.train(0))])
    h.feed.send(h.train(0), 1000)
    message = h.worker._recv()
    assert message.kind is Kind.TRAIN and h.inbox.rejected == 2
    assert [r.kind for r in h.reports()] == [Kind.REJECTED, Kind.REJECTED]


def test_heartbeat_while_blocked_in_a_send(config, tmp_path):
    """Downstream consumes nothing: the worker's third output blocks on the window of 2, and it heartbeats
    from inside that wait, saying it waits on a send; once downstream consumes, it goes on."""
    h = Harness(config, tmp_path, heartbeat_s=0.1)
    for step in range(3):
        h.feed.send(h.train(step), 1000)
    h.feed.send(Message(Kind.STOP, "coordinator", meta=SeqMeta(-1)), 1000)
    thread = threading.Thread(target=h.worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    beats = []
    while time.monotonic() < deadline and not beats:
        time.sleep(0.05)
        beats = [r for r in h.reports() if r.kind is Kind.HEARTBEAT and r.meta.waiting == "send"]
    assert beats, "no heartbeat from a worker blocked in a send"
    assert thread.is_alive() and h.downstream.pending() == 2
    received = []
    while thread.is_alive() or h.downstream.pending():
        h.reports()          # the worker waits for its final report to be consumed
        try:
            received.append(h.downstream.recv(100).kind)
        except TimeoutError:
            pass
    thread.join(5)
    assert received == [Kind.TRAIN] * 3 + [Kind.STOP]
    assert (tmp_path / "layers" / "layer_000.pt").exists()


def test_checkpoint_marker_writes_layers_passes_on_and_acknowledges(config, tmp_path):
    h = Harness(config, tmp_path)
    directory = tmp_path / "ckpt"
    directory.mkdir()
    h.feed.send(Message(Kind.CHECKPOINT, "coordinator", meta=CheckpointMeta(7, str(directory), 0)), 1000)
    h.worker.handlers[Kind.CHECKPOINT](h.worker._recv())
    assert sorted(p.name for p in directory.iterdir()) == ["layer_000.pt", "layer_001.pt"]
    assert validate(h.downstream.recv(0), Route.DOWN).meta == CheckpointMeta(7, str(directory), 0)
    (ack,) = h.reports()
    assert ack.kind is Kind.CHECKPOINT_ACK and ack.meta.id == 7


def test_a_worker_without_the_run_folder_ships_its_layer_files_before_it_acknowledges(config, tmp_path):
    from auglocal.workers.runtime.layer_shipping import LayerFileSink

    h = Harness(config, tmp_path, ship_layers=True)
    directory = tmp_path / "ckpt"        # the coordinator's folder: on another machine, so never written here
    h.feed.send(Message(Kind.CHECKPOINT, "coordinator", meta=CheckpointMeta(7, str(directory), 0)), 1000)
    h.worker.handlers[Kind.CHECKPOINT](h.worker._recv())
    assert not directory.exists()
    *files, ack = h.reports()
    assert ack.kind is Kind.CHECKPOINT_ACK and {m.kind for m in files} == {Kind.LAYER_FILE}
    sink = LayerFileSink()
    sink.allow(directory)
    for m in files:
        sink.receive(m)
    assert sorted(p.name for p in directory.iterdir()) == ["layer_000.pt", "layer_001.pt"]
    state = torch.load(directory / "layer_001.pt", weights_only=True)
    assert state["updates"] == 0 and state["last_applied"] == [-1, -1]


def test_a_full_disk_is_not_restartable(config, tmp_path, monkeypatch):
    """An I/O error while writing layer files says where and asks for no restart (it would fail again)."""
    import auglocal.workers.runtime.layer_files as layer_files

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(layer_files, "atomic_torch_save", full)
    h = Harness(config, tmp_path)
    h.feed.send(Message(Kind.CHECKPOINT, "coordinator", meta=CheckpointMeta(1, str(tmp_path), 0)), 1000)
    with pytest.raises(WorkerError, match="No space left"):
        h.worker.handlers[Kind.CHECKPOINT](h.worker._recv())
    (error,) = h.reports()
    assert error.kind is Kind.ERROR and not error.meta.restartable and str(tmp_path) in error.meta.detail

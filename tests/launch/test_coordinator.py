"""The coordinator driven in this process: in-memory links, stand-in worker processes and a clock of our own."""

from __future__ import annotations

import msgpack
import pytest
from auglocal.engine.config import RunConfig, resolve
from auglocal.engine.data import build_dataset
from auglocal.launch.run.coordinator import AttemptOptions, Coordinator, Placement, Position, RunCounters, WorkerFailed
from auglocal.launch.run.progress import EpochTracker
from auglocal.workers.links.memlink import MemoryLink
from auglocal.workers.wire.messages import Codec, Kind, Message
from auglocal.workers.wire.protocol import (
    CheckpointAckMeta,
    ErrorMeta,
    HeartbeatMeta,
    MetricsMeta,
    RejectedMeta,
    Route,
    kinds_on,
)


class StandIn:
    """A worker process that is alive until told otherwise."""

    def __init__(self):
        self.alive, self.exitcode = True, None

    def is_alive(self) -> bool:
        return self.alive

    def orphaned(self) -> bool:
        return False

    def stop(self) -> None:
        self.alive = False

    def join(self, timeout: float) -> None:
        pass


class Store:
    def __init__(self):
        self.commits = []

    def commit(self, ckpt_id, manifest):
        self.commits.append((ckpt_id, manifest))

    def prepare(self, ckpt_id):
        return f"/nowhere/{ckpt_id}"


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def coord(tmp_path):
    data = build_dataset("synthetic", seed=1, input_size=8, num_classes=4, train_size=16, test_size=8)
    cfg = resolve(RunConfig(model="resnet20", d=3, dataset="synthetic", epochs=1, batch_size=4, input_size=8,
                            num_classes=4), data)
    steps = []
    tracker = EpochTracker(cfg, 4, 2, 2, steps.append, lambda r: None, lambda: len(steps))
    placement = Placement(groups=[[0, 1], [2, 3]], layer_ids=[[0, 1], [2, 3, 4]], devices=["cpu", "cpu"],
                          threads=[1, 1])
    clock = Clock()
    c = Coordinator(cfg, data, placement, str(tmp_path), needs_input=[False] * 4,
                    opts=AttemptOptions(heartbeat_timeout=10.0), store=Store(), tracker=tracker,
                    counters=RunCounters(), clock=clock)
    results = MemoryLink(c.codec, "results", window=64)
    c.attach(results, MemoryLink(c.codec, "w0").sender(), [StandIn(), StandIn()])
    c.ready = {0, 1}
    c.test_clock, c.test_results, c.test_steps = clock, results, steps
    yield c
    c.shutdown()


def report(c, rank: int, kind: Kind, meta, epoch: int = 0, step: int = 0) -> None:
    c.test_results.sender().send(Message(kind, f"worker{rank}", epoch, step, meta=meta), 0)


def test_the_coordinator_handles_exactly_the_reports(coord):
    assert set(coord.handlers) == kinds_on(Route.REPORT)


@pytest.mark.parametrize("stranger", ["random bytes", "wrong secret", "oversized header", "unknown kind"])
def test_a_stranger_on_the_results_socket_is_counted_and_dropped(stranger, coord):
    if stranger == "random bytes":
        frames = [b"\x93\x01 random", b"more"]
    elif stranger == "wrong secret":
        frames = Codec(coord.run_id, "guess").encode(Message(Kind.ERROR, "worker0", meta=ErrorMeta("x", True)))
    elif stranger == "oversized header":
        frames = [b"\x00" * (1 << 17)]
    else:
        frames = [msgpack.packb({"kind": "gossip", "sender": "x"})]
    coord.test_results.inject([bytes(f) for f in frames])
    coord._drain()
    assert coord.counters.rejected == 1
    report(coord, 1, Kind.REJECTED, RejectedMeta("a worker dropped one too"))
    coord._drain()
    assert coord.counters.rejected == 2


def test_a_malformed_report_from_a_worker_fails_that_worker(coord):
    frames = coord.codec.encode(Message(Kind.METRICS, "worker1", meta={"busy": "lots"}))
    coord.test_results.inject([bytes(f) for f in frames])
    with pytest.raises(WorkerFailed) as err:
        coord._drain()
    assert err.value.rank == 1 and "malformed report" in str(err.value)


def test_a_worker_error_report_fails_it_and_says_whether_to_restart(coord):
    report(coord, 0, Kind.ERROR, ErrorMeta("disk full", False))
    with pytest.raises(WorkerFailed) as err:
        coord._drain()
    assert err.value.rank == 0 and not err.value.restartable and err.value.layers == [0, 1]


def test_checkpoint_commits_once_every_worker_has_acknowledged(coord):
    coord.pending[3] = {"acks": set(), "pos": Position(0, 2, 2)}
    for step in range(2):
        for rank in (0, 1):
            report(coord, rank, Kind.METRICS, MetricsMeta(0.1, 4, {str(2 * rank): 1.0}, 2 if rank else None),
                   step=step)
    report(coord, 1, Kind.CHECKPOINT_ACK, CheckpointAckMeta(3))
    coord._drain()
    assert coord.store.commits == []
    report(coord, 0, Kind.CHECKPOINT_ACK, CheckpointAckMeta(3))
    coord._drain()
    ((ckpt_id, manifest),) = coord.store.commits
    assert ckpt_id == 3 and manifest["global_step"] == 2 and manifest["tracker"]["steps_done"] == 2
    assert 3 not in coord.pending
    report(coord, 0, Kind.CHECKPOINT_ACK, CheckpointAckMeta(3))
    with pytest.raises(WorkerFailed, match="not pending"):
        coord._drain()


def test_a_hang_is_blamed_on_the_silent_worker_not_on_one_blocked_behind_it(coord):
    """Worker 0 waits on a full link to worker 1 and heartbeats; worker 1 is silent: worker 1 hung."""
    report(coord, 0, Kind.HEARTBEAT, HeartbeatMeta("send"))
    coord._drain()
    coord.test_clock.t += 9
    report(coord, 0, Kind.HEARTBEAT, HeartbeatMeta("send"))
    coord._drain()
    coord.check_workers()                                  # 9 s of silence: within the timeout
    coord.test_clock.t += 2
    with pytest.raises(WorkerFailed) as err:
        coord.check_workers()
    assert err.value.rank == 1 and "hung" in str(err.value)


def test_silence_of_a_worker_blocked_on_a_send_is_blamed_last(coord):
    """Both silent past the timeout; worker 0's last word was that it waits on a send: blame worker 1."""
    report(coord, 0, Kind.HEARTBEAT, HeartbeatMeta("send"))
    coord._drain()
    coord.test_clock.t += 30
    with pytest.raises(WorkerFailed) as err:
        coord.check_workers()
    assert err.value.rank == 1


def test_a_dead_worker_is_a_failure(coord):
    coord.workers[1].alive, coord.workers[1].exitcode = False, -9
    with pytest.raises(WorkerFailed, match="died with exit code -9"):
        coord.check_workers()


def test_stop_reports_finish_the_attempt(coord):
    from auglocal.workers.wire.protocol import StoppedMeta

    for rank in (0, 1):
        report(coord, rank, Kind.STOPPED, StoppedMeta(2, 0, {"0": 4}))
    coord._drain()
    assert coord.stopped == {0, 1} and coord.stats.max_in_flight == {1: 2}
    coord.workers[0].alive, coord.workers[0].exitcode = False, 0
    coord.check_workers()                                  # exited after its stop: not a failure

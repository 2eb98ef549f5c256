"""Strangers on the wire: messages that do not carry the run's secret, sent to every worker's inbox and to the
coordinator's results socket while the run trains, also in the attempt after a restart. None of them may cause
a restart or reach training; each is counted once in summary.json, across restarts.
"""

from __future__ import annotations

import contextlib
import time

import msgpack
import pytest
import torch
import zmq
import zmq.utils.garbage  # noqa: F401  (zero-copy sends import it lazily: a forked `nobody` child cannot read it)
from auglocal.launch.run.coordinator import Coordinator
from auglocal.workers.wire.messages import MAX_HEADER_BYTES, Codec, Kind, Message

from tests.faults.support import (
    after_feeding,
    assert_complete,
    assert_no_orphan_workers,
    run_in_process,
    worker_processes,
)

STRANGERS = {
    "random bytes": lambda: [bytes(range(256)) * 4, b"\xff" * 64],
    "wrong secret": lambda: Codec("some-run", "a-guess").encode(
        Message(Kind.TRAIN, "worker0", 0, 0, tensors={"h": torch.zeros(2, 3, 16, 16), "y": torch.zeros(2).long()})),
    "oversized frame": lambda: [b"\x00" * (MAX_HEADER_BYTES + 1), b"x" * 1024],
    "unknown kind": lambda: [msgpack.packb({"v": 2, "kind": "gossip", "sender": "worker0", "meta": {}})],
}
AFTER_STEP = 3      # strangers arrive once this many minibatches of an attempt were fed (training under way)


def send_strangers(coord: Coordinator) -> int:
    """Each stranger to each worker inbox and to the results socket; returns how many messages went out."""
    context = zmq.Context.instance()
    addresses = [link.address for link in coord.inboxes] + [coord.results_link.address]
    sent = 0
    for address in addresses:
        for make in STRANGERS.values():   # one connection each, one attempt: each is refused (and counted) once
            with context.socket(zmq.DEALER) as sock:
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RECONNECT_IVL, -1)
                sock.connect(address)
                with contextlib.suppress(zmq.Again):
                    sock.send_multipart([bytes(f) for f in make()], zmq.NOBLOCK)
                time.sleep(0.05)
                sent += 1
    return sent


@pytest.fixture
def strangers_in_every_attempt(monkeypatch):
    """Patch the coordinator so that each attempt, once training is under way, receives the strangers and
    waits until every one of them has been counted (by the worker that dropped it, or by itself)."""
    log = {"sent": 0, "attempts": 0}

    def strangers(self):
        before = self.counters.rejected
        n = send_strangers(self)
        log["sent"] += n
        log["attempts"] += 1
        deadline = time.monotonic() + 60
        while self.counters.rejected < before + n:
            assert time.monotonic() < deadline, f"{self.counters.rejected - before} of {n} strangers counted"
            self._drain(50)

    after_feeding(monkeypatch, {AFTER_STEP: strangers})
    return log


def test_strangers_are_counted_never_trained_on_and_cause_no_restart(strangers_in_every_attempt, reference,
                                                                     tmp_path):
    out = tmp_path / "run"
    assert run_in_process(out) == 0
    s = assert_complete(reference, out, restarts=0)
    assert strangers_in_every_attempt["attempts"] == 1
    assert s["rejected_messages"] == strangers_in_every_attempt["sent"] == 3 * len(STRANGERS)
    assert_no_orphan_workers()


def test_strangers_before_and_after_a_restart_are_all_counted(strangers_in_every_attempt, reference, tmp_path):
    """Worker 1 is killed at minibatch 8: the one restart is the kill's, the count spans both attempts."""
    out = tmp_path / "run"
    assert run_in_process(out, "kill:worker=1:step=8") == 0
    s = assert_complete(reference, out, restarts=1)
    assert "died with exit code -9" in s["restarts"][0]["error"]
    assert strangers_in_every_attempt["attempts"] == 2
    assert s["rejected_messages"] == strangers_in_every_attempt["sent"] == 2 * 3 * len(STRANGERS)
    assert_no_orphan_workers()


# --- a stranger's huge multipart message: refused in the handshake, before ZeroMQ buffers any of it ---------
BIG_FRAMES, BIG_FRAME_BYTES = 6, 256 << 20
GROWTH_BOUND = 200 << 20


def _big_stranger(address: str, as_nobody: bool) -> None:
    """Child process (forked): optionally become `nobody`, then send one header plus 6 x 256 MiB frames.

    A refused handshake can close the DEALER's only pipe before the send; the send then waited for a peer
    forever (and the test for its 30 s join, on most runs). It gives up after 1 s instead: where the handshake
    is not refused the pipe exists from connect on and takes the message at once, so only a refused send is
    cut short."""
    import os
    if as_nobody:
        os.setgid(65534)
        os.setuid(65534)
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 5000)
    sock.setsockopt(zmq.SNDTIMEO, 1000)
    sock.connect(address)
    big = memoryview(bytearray(BIG_FRAME_BYTES))
    with contextlib.suppress(zmq.Again):
        sock.send_multipart([msgpack.packb({"v": 3}), *([big] * BIG_FRAMES)], copy=False)
    sock.close()
    context.term()


class PeakRss:
    """Peak RSS of every process of the run (this one, the coordinator, and its workers), sampled by psutil."""

    def __init__(self):
        import threading

        import psutil
        self.procs = [psutil.Process(), *worker_processes()]
        self.base = {p.pid: p.memory_info().rss for p in self.procs}
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.01):
            for p in self.procs:
                try:
                    self.peak[p.pid] = max(self.peak[p.pid], p.memory_info().rss)
                except Exception:
                    pass

    def stop(self) -> dict[int, int]:
        self._stop.set()
        self._thread.join()
        return {pid: self.peak[pid] - self.base[pid] for pid in self.base}


@pytest.mark.parametrize("transport", [
    pytest.param("ipc", marks=pytest.mark.slow),   # the same fences as tcp; the default run keeps the harder row
    "tcp"])
def test_a_strangers_huge_multipart_message_costs_no_memory(transport, reference, tmp_path, monkeypatch):
    """ipc from this user (another user cannot enter the 0700 socket folder), tcp from `nobody` (when the tests
    run as root; else from this user, which passes the same fences): the run's
    processes grow by less than GROWTH_BOUND each and in total, the stranger is counted, the run ends bitwise
    equal to the clean one. On code without handshake authentication a worker buffers all 1.5 GiB."""
    import multiprocessing
    import os
    as_nobody = transport == "tcp" and os.geteuid() == 0   # another user where the test can become one
    seen = {}

    def big_stranger(self):
        before = self.counters.rejected
        rss = PeakRss()
        child = multiprocessing.get_context("fork").Process(target=_big_stranger,
                                                            args=(self.inboxes[1].address, as_nobody))
        child.start()
        deadline = time.monotonic() + 60
        while self.counters.rejected < before + 1 and time.monotonic() < deadline:
            self._drain(50)
        child.join(30)
        if child.is_alive():
            child.kill()
        seen["growth"] = rss.stop()
        seen["counted"] = self.counters.rejected - before

    after_feeding(monkeypatch, {AFTER_STEP: big_stranger})
    out = tmp_path / "run"
    assert run_in_process(out, transport=transport) == 0
    assert_complete(reference, out, restarts=0)
    growth = seen["growth"]
    print(f"peak RSS growth per process ({transport}): {growth}")
    assert seen["counted"] >= 1
    assert max(growth.values()) < GROWTH_BOUND and sum(growth.values()) < GROWTH_BOUND, growth
    assert_no_orphan_workers()


# --- the frame bound of a link: from its own tensor specs, not the codec's 1 GiB ------------------------------
def _insider(address: str, secret: str) -> tuple[zmq.Socket, zmq.Socket]:
    """A DEALER that passes the run's handshake (it knows the PLAIN password) and never reconnects, with a
    monitor on its connection events; only the frame bound or the codec can stop what it sends."""
    from auglocal.workers.links import zap
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, -1)
    zap.join_plain(sock, secret)
    monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    sock.connect(address)
    return sock, monitor


def _events(monitor: zmq.Socket, until: int, timeout_s: float, drain) -> set[int]:
    """The monitor's events until `until` was seen or `timeout_s` passed, reading the run's reports meanwhile."""
    from zmq.utils.monitor import recv_monitor_message
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while until not in seen and time.monotonic() < deadline:
        while monitor.poll(0):
            seen.add(int(recv_monitor_message(monitor)["event"]))
        drain(50)
    return seen


def _probe_bound(coord: Coordinator, address: str, bound: int) -> dict[int, tuple[bool, int]]:
    """Send `address` one frame of bound + 1 bytes, then one of exactly `bound`, each from its own insider; per
    size: whether ZeroMQ disconnected the insider, and how many strangers the run counted since the first."""
    before = coord.counters.rejected
    result = {}
    for size in (bound + 1, bound):
        sock, monitor = _insider(address, coord.codec.secret)
        try:
            sock.send(b"\x00" * size)
            gone = zmq.EVENT_DISCONNECTED in _events(monitor, zmq.EVENT_DISCONNECTED, 10 if size > bound else 1,
                                                     coord._drain)
            deadline = time.monotonic() + 30
            while size == bound and coord.counters.rejected == before and time.monotonic() < deadline:
                coord._drain(50)
            coord._drain(500)   # a late count of the larger frame would show by now
            result[size] = (gone, coord.counters.rejected - before)
        finally:
            sock.disable_monitor()
            monitor.close(linger=0)
            sock.close(linger=0)
    return result


def test_a_frame_one_byte_above_the_links_bound_is_dropped_by_zeromq(reference, tmp_path, monkeypatch):
    """While the run trains, a peer past the handshake sends one frame one byte larger than the largest the link
    carries (workers/wire/frame_bounds.py) to worker 1's inbox (its input activation at the batch size), worker 1's
    control inbox and the coordinator's results inbox (headers only): ZeroMQ disconnects it before buffering
    the frame, so nobody sees or counts it; a frame of exactly the bound still reaches the codec (refused and
    counted once). The run ends bitwise equal to the clean one. On code that leaves every link at the codec's
    1 GiB each larger frame is delivered and counted, and the peer stays connected."""
    from auglocal.workers.wire.frame_bounds import HEADER_ONLY, inbox_bound
    seen = {}

    def probe(self):
        spec = self.specs()[1]
        seen["bound"] = bound = inbox_bound(spec.schema, spec.config)
        for name, address, limit in (("inbox", self.inboxes[1].address, bound),
                                     ("control", spec.control.address, HEADER_ONLY),
                                     ("results", self.results_link.address, HEADER_ONLY)):
            seen[name] = (limit, _probe_bound(self, address, limit))

    after_feeding(monkeypatch, {AFTER_STEP: probe})
    out = tmp_path / "run"
    assert run_in_process(out) == 0
    s = assert_complete(reference, out, restarts=0)
    assert seen["bound"] > MAX_HEADER_BYTES      # an activation of the small run, not the header floor
    for name in ("inbox", "control", "results"):
        limit, probe = seen[name]
        assert probe[limit + 1] == (True, 0), (name, seen)     # disconnected, never delivered
        assert probe[limit] == (False, 1), (name, seen)        # delivered to the codec, refused and counted
    assert s["rejected_messages"] == 3
    assert_no_orphan_workers()

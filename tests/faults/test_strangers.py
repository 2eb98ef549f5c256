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

from launch.coordinator import Coordinator
from tests.faults.support import assert_complete, assert_no_orphan_workers, run_in_process
from workers.messages import MAX_HEADER_BYTES, Codec, Kind, Message

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
    original = Coordinator._feed_train
    log = {"sent": 0, "attempts": 0}

    def feed_train(self, event):
        original(self, event)
        fed = getattr(self, "_fed_in_attempt", 0) + 1
        self._fed_in_attempt = fed
        if fed == AFTER_STEP:
            before = self.counters.rejected
            n = send_strangers(self)
            log["sent"] += n
            log["attempts"] += 1
            deadline = time.monotonic() + 60
            while self.counters.rejected < before + n:
                assert time.monotonic() < deadline, f"{self.counters.rejected - before} of {n} strangers counted"
                self._drain(50)

    monkeypatch.setattr(Coordinator, "_feed_train", feed_train)
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

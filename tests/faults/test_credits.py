"""Forged credits in a running run: bytes written into worker 0's credit FIFO (`w1.sock.*.credits` in the run's
socket folder) while worker 1 is stopped, then into the coordinator's (`w0.sock.*.credits`). They must not widen
the window: worker 0 sends nothing more, the bytes are refused and counted once per FIFO in summary.json,
`max_in_flight` stays within the window, and the run ends bitwise equal to the sequential reference
(workers/links/credit_pipe.py).
"""

from __future__ import annotations

import glob
import os
import signal
import time

from auglocal.launch.run.coordinator import Coordinator

from tests.faults.support import after_feeding, assert_complete, assert_no_orphan_workers, run_in_process

STOP_AT, FORGE_AT = 1, 5     # worker 1 stops once this many minibatches were fed; the bytes come at this many
# (no checkpoint marker in between, so worker 0's steps count what it sent: five fit in what worker 0, its inbox
# and its window to worker 1 hold, so feeding them never blocks)
FORGED = b"\x01" * 24        # what one-byte credits looked like, three records' worth


def _forge(socket_dir: str, inbox: str) -> None:
    """Write FORGED into the one credit FIFO of the link into `inbox` (its sender reads it)."""
    (fifo,) = glob.glob(os.path.join(socket_dir, f"{inbox}.sock.*.credits"))
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, FORGED)
    finally:
        os.close(fd)


def _steps_settled(coord: Coordinator, seen: dict, quiet_s: float = 1.5, timeout_s: float = 30) -> int:
    """Worker 0's finished steps once they stopped changing for `quiet_s` (it waits on its full window)."""
    last, since = seen["w0"], time.monotonic()
    deadline = since + timeout_s
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "worker 0 never stopped sending with worker 1 stopped"
        coord._drain(50)
        if seen["w0"] != last:
            last, since = seen["w0"], time.monotonic()
    return last


def test_forged_credits_do_not_widen_the_window_and_are_counted(reference, tmp_path, monkeypatch):
    """On the code before 8-byte keyed records (one byte per credit, commit 6102940^) worker 0 sends one more
    minibatch into the stopped worker's queue (then ZeroMQ's high-water mark, the second fence, holds it), and
    nothing is counted; the coordinator counted nothing either before its feed sender reported refusals."""
    original_metrics = Coordinator._on_metrics
    seen = {"w0": 0}

    def on_metrics(self, msg):
        seen["w0"] += self.ranks[msg.sender] == 0
        original_metrics(self, msg)

    def forge(self):
        try:
            blocked = _steps_settled(self, seen)
            before = self.counters.rejected
            _forge(self.tmp, "w1")     # worker 0's credits from worker 1
            seen["blocked"] = (blocked, _steps_settled(self, seen, quiet_s=2.0))
            deadline = time.monotonic() + 30
            while self.counters.rejected == before and time.monotonic() < deadline:
                self._drain(50)
            seen["counted"] = self.counters.rejected - before
            _forge(self.tmp, "w0")     # the coordinator's credits from worker 0: refused at its next feed
        finally:
            os.kill(self.workers[1].pid, signal.SIGCONT)

    monkeypatch.setattr(Coordinator, "_on_metrics", on_metrics)
    after_feeding(monkeypatch, {STOP_AT: lambda self: os.kill(self.workers[1].pid, signal.SIGSTOP), FORGE_AT: forge})
    out = tmp_path / "run"
    assert run_in_process(out, checkpoint_every=0) == 0
    s = assert_complete(reference, out, restarts=0)
    blocked, after = seen["blocked"]
    assert blocked < FORGE_AT, seen          # worker 0 really was held by its window
    assert after == blocked, seen            # ...and the forged bytes let nothing more out
    assert seen["counted"] == 1, seen                           # worker 0 refused them and reported it
    assert s["rejected_messages"] == 2, s["rejected_messages"]   # ...and so did the coordinator's feed
    assert max(s["max_in_flight"].values()) <= 2, s["max_in_flight"]
    assert_no_orphan_workers()

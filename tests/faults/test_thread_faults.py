"""Faults with thread workers: a worker that dies, hangs, raises, receives a corrupt message or dies while
writing a checkpoint takes its whole host process down; the attempt restarts from the last committed
checkpoint and the run ends bitwise equal to the sequential trainer, as with process workers.

The two workers of the small run share one host process, so the faulty one's neighbour goes down with it.
"""

import pytest

from tests.faults.support import assert_complete, assert_no_orphan_workers, run_in_process

THREADS = dict(worker_kind="thread")


def _one_restart(reference, out, fault: str, **kw) -> dict:
    assert run_in_process(out, fault, **THREADS, **kw) == 0
    s = assert_complete(reference, out, restarts=1)
    assert_no_orphan_workers()
    return s["restarts"][0]


def test_raising_thread_worker_reports_ends_its_host_and_restarts(reference, tmp_path):
    """An exception in one thread is reported (what and where) before the host exits; one-worker recovery
    says it falls back to the whole restart for thread workers."""
    restart = _one_restart(reference, tmp_path / "run", "raise:worker=1:step=8", recovery="one")
    assert restart["worker"] == 1 and restart["path"] == "all"
    assert "injected fault: an unexpected exception" in restart["error"]
    assert "thread workers" in restart["fallback"]


@pytest.mark.slow
@pytest.mark.parametrize("fault, worker, error", [
    ("kill:worker=1:step=8", 1, "died with exit code -9"),
    ("kill-checkpoint:worker=0:checkpoint=4", 0, "died with exit code -9"),
    ("corrupt:worker=0:step=8", 1, "lost on the way"),
])
def test_thread_worker_fault_restarts_and_ends_equal(fault, worker, error, reference, tmp_path):
    restart = _one_restart(reference, tmp_path / "run", fault)
    assert error in restart["error"]
    if "kill" not in fault:
        assert restart["worker"] == worker


@pytest.mark.slow
def test_hung_thread_worker_is_detected_while_its_neighbour_heartbeats(reference, tmp_path):
    """Worker 1 hangs inside a host whose other thread keeps heartbeating: the coordinator still blames 1."""
    restart = _one_restart(reference, tmp_path / "run", "hang:worker=1:step=8", heartbeat_timeout=4.0)
    assert restart["worker"] == 1 and "hung" in restart["error"]

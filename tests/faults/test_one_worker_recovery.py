"""One-worker recovery (--recovery one) in a pipelined run: only the failed worker restarts, the others keep
their processes (same pids) and state, and the run ends bitwise equal to the sequential reference with every
layer applied every minibatch exactly once. Faults it cannot handle fall back to the whole restart.

The small run has 12 minibatches and checkpoints every 2 (tests/faults/support.py). Each run costs a few
seconds on an idle 2-core machine; the default run keeps one case per path (a middle worker, worker 0, the
fall-back), the rest are marked slow.

The feed runs up to about window + 1 messages per link ahead of the last worker, so a fault late in the run
may hit after the coordinator fed the stop marker; `kill-stop` places one there for certain (the worker dies
once it has passed the marker on): it is recovered alone as well, its neighbours held until released.
"""

import pytest

from tests.faults.support import assert_complete, assert_no_orphan_workers, run_in_process

slow = pytest.mark.slow


def assert_only_restarted(s: dict, failed: list[int], workers: int) -> None:
    """Every restart took the one-worker path; the failed ranks ran in two processes, every other rank in the
    same single process from start to end."""
    assert [r["path"] for r in s["restarts"]] == ["one"] * len(failed), s["restarts"]
    assert [r["worker"] for r in s["restarts"]] == failed
    pids = {int(k): v for k, v in s["worker_pids"].items()}
    assert sorted(pids) == list(range(workers))
    for rank, ranks_pids in pids.items():
        assert len(ranks_pids) == (2 if rank in failed else 1), pids
        assert len(set(ranks_pids)) == len(ranks_pids)
    for r in s["restarts"]:
        assert r["pid_before"] == pids[r["worker"]][0] and r["pid_after"] == pids[r["worker"]][1]


def run_one(reference, tmp_path, fault: str, workers: str, failed: list[int], **kw) -> dict:
    out = tmp_path / "run"
    assert run_in_process(out, fault, workers=workers, recovery="one", **kw) == 0
    s = assert_complete(reference, out, restarts=len(failed))
    assert_only_restarted(s, failed, int(workers))
    assert_no_orphan_workers()
    return s


@pytest.mark.parametrize("fault, failed", [
    ("kill:worker=1:step=8", [1]),           # a middle worker: worker 0 replays its log, worker 2 drops repeats
    ("kill:worker=0:step=3", [0]),           # the first: the coordinator re-feeds from the checkpoint
    pytest.param("kill:worker=2:step=4", [2], marks=slow),       # the last: no downstream to tell
    pytest.param("kill-checkpoint:worker=1:checkpoint=4", [1], marks=slow),
])
def test_one_worker_restarts_alone(fault, failed, reference, tmp_path):
    s = run_one(reference, tmp_path, fault, "3", failed)
    assert "died with exit code -9" in s["restarts"][0]["error"]
    assert s["restarts"][0]["spare"] is True        # the warm spare took the worker's place


def test_without_spares_the_replacement_starts_cold(reference, tmp_path):
    """--spares 0: the replacement is a new process that builds its stage itself; the same weights."""
    s = run_one(reference, tmp_path, "kill:worker=1:step=8", "3", [1], spares=0)
    assert s["restarts"][0]["spare"] is False


@slow
def test_hung_worker_restarts_alone(reference, tmp_path):
    s = run_one(reference, tmp_path, "hang:worker=1:step=8", "3", [1], heartbeat_timeout=4.0)
    assert "hung" in s["restarts"][0]["error"]


@slow
@pytest.mark.parametrize("kind", ["corrupt", "truncated"])
def test_receiver_of_a_malformed_message_restarts_alone(kind, reference, tmp_path):
    """Worker 0 puts a bad message on its link; worker 1 stops on it and restarts alone, and worker 0's
    replay log, which holds the message it meant to send, heals the gap."""
    run_one(reference, tmp_path, f"{kind}:worker=0:step=8", "3", [1])


@slow
@pytest.mark.parametrize("fault, failed", [
    ("kill:worker=0:step=5", [0]),
    ("kill:worker=2:step=7", [2]),
    ("kill:worker=3:step=2", [3]),           # early: the window lets the feed run ~3 messages per link ahead
    ("kill-seq:worker=1:step=4", [1, 2]),    # two workers, one after the other
])
def test_four_workers(fault, failed, reference, tmp_path):
    run_one(reference, tmp_path, fault, "4", failed)


def test_two_adjacent_workers_down_fall_back_to_the_whole_restart(reference, tmp_path):
    out = tmp_path / "run"
    assert run_in_process(out, "kill-pair:worker=1:step=7", workers="3", recovery="one") == 0
    s = assert_complete(reference, out, restarts=1)
    (restart,) = s["restarts"]
    assert restart["path"] == "all" and restart["worker"] in (1, 2)   # both died; either is seen first
    assert "two adjacent workers down (1 and 2)" in restart["fallback"]
    assert all(len(p) == 2 for p in s["worker_pids"].values())     # every worker was restarted
    assert_no_orphan_workers()


@slow
def test_the_same_worker_failing_again_falls_back(reference, tmp_path):
    """With `always`, the new worker 1 dies at the same minibatch: the second failure takes the whole restart
    (whose workers carry the fault again), until the budget is spent."""
    out = tmp_path / "run"
    assert run_in_process(out, "kill:worker=1:step=8:always", workers="3", recovery="one", max_restarts=1) == 1
    import json

    failure = json.loads((out / "failure.json").read_text())
    paths = [(r["attempt"], r["path"]) for r in failure["restarts"]]
    assert paths == [(0, "one"), (0, "all"), (1, "one"), (1, "all")]
    assert failure["restarts"][1]["fallback"] == "worker 1 failed again"
    assert_no_orphan_workers()


def test_one_worker_restarts_alone_over_curve_links(reference, tmp_path):
    """--transport curve: the restarted worker binds new encrypted inboxes, its upstream relinks with the same
    keys, and the run still ends bitwise equal."""
    run_one(reference, tmp_path, "kill:worker=1:step=8", "3", [1], transport="curve")


@pytest.mark.parametrize("fault, failed", [
    ("kill-stop:worker=1", [1]),             # worker 0 (stopped, held) replays its log, stop marker included;
                                             # worker 2 (stopped, held) drops the repeats
    pytest.param("kill-stop:worker=0", [0], marks=slow),   # the coordinator re-feeds, stop marker included
    pytest.param("kill-stop:worker=2", [2], marks=slow),   # the last: its held upstream relinks and replays
])
def test_a_worker_failing_after_the_stop_marker_restarts_alone(fault, failed, reference, tmp_path):
    s = run_one(reference, tmp_path, fault, "3", failed)
    assert s["restarts"][0]["after_stop"] is True
    assert "died with exit code -9" in s["restarts"][0]["error"]

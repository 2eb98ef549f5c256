"""The replay log: its memory bound, spilling to files past it, replay order, pruning at commits."""

from __future__ import annotations

import os

import pytest
from auglocal.workers.runtime.replay_log import LogLost, ReplayLog


def frames(seq: int, size: int) -> list[bytes]:
    return [f"header {seq}".encode(), bytes([seq % 256]) * size]


def test_entries_stay_in_memory_up_to_the_bound_then_spill_to_files(tmp_path):
    log = ReplayLog(memory_bytes=2500, spill_dir=str(tmp_path / "spill"), name="w0")
    for seq in range(5):
        log.append(seq, frames(seq, 1000))
    entry = len(frames(0, 1000)[0]) + 1000
    assert log.memory_bytes == 2 * entry <= 2500          # two fit, the other three went to disk
    assert log.disk_bytes == 3 * entry
    spilled = [f for _, _, files in os.walk(tmp_path / "spill") for f in files]
    assert len(spilled) == 3
    assert list(log.since(-1)) == [frames(s, 1000) for s in range(5)]     # in order, spilled read back
    assert list(log.since(2)) == [frames(s, 1000) for s in (3, 4)]


def test_prune_drops_entries_and_their_files_and_counts_the_interval(tmp_path):
    log = ReplayLog(memory_bytes=0, spill_dir=str(tmp_path))             # 0: everything on disk
    for seq in range(4):
        log.append(seq, frames(seq, 100))
    log.prune(2)
    assert [f[0] for f in log.since(2)] == [b"header 3"]
    assert len([f for _, _, files in os.walk(tmp_path) for f in files]) == 1
    with pytest.raises(LogLost, match="pruned up to 2"):
        list(log.since(1))
    stats = log.stats()
    assert stats["intervals"] == 1 and stats["appended_bytes"] == stats["max_interval_bytes"] > 400
    assert stats["peak_memory_bytes"] == 0 and stats["peak_disk_bytes"] == stats["appended_bytes"]
    log.close()
    assert not any(files for _, _, files in os.walk(tmp_path))


def test_memory_freed_by_a_prune_is_used_again_and_order_is_kept(tmp_path):
    log = ReplayLog(memory_bytes=1200, spill_dir=str(tmp_path))
    log.append(0, frames(0, 1000))       # memory
    log.append(1, frames(1, 1000))       # disk
    log.prune(0)
    log.append(2, frames(2, 1000))       # memory again, newer than the spilled one
    assert log.memory_bytes > 0 and log.disk_bytes > 0
    assert [f[0] for f in log.since(0)] == [b"header 1", b"header 2"]


def test_entries_must_grow_and_are_copies(tmp_path):
    log = ReplayLog(memory_bytes=1 << 20)
    buffer = bytearray(b"abc")
    log.append(5, [buffer])
    buffer[:] = b"xyz"                    # the sender reuses its memory: the log keeps what was sent
    assert list(log.since(4)) == [[b"abc"]]
    with pytest.raises(ValueError, match="must grow"):
        log.append(5, [b"again"])

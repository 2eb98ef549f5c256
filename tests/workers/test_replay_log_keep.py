"""The replay log by reference (`ReplayLog.keep`): the sent frames are held, not copied; their checksums and spill
files come from a background thread, yet every entry is on disk or in memory when a replay asks, a damaged
spill is still refused, a spill that failed is reported, and pruning meanwhile leaves no file behind."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from auglocal.workers.runtime import replay_log
from auglocal.workers.runtime.replay_log import LogDamaged, ReplayLog
from auglocal.workers.runtime.spiller import Spiller
from auglocal.workers.wire.messages import Codec, Kind, Message
from auglocal.workers.wire.protocol import TrainMeta


def sent_frames(seq: int, n: int = 50_000) -> list:
    """What a ZeroMQ send hands back: header bytes and a zero-copy view on the tensor."""
    codec = Codec("run", "secret")
    h = torch.full((n,), float(seq))
    return codec.encode(Message(Kind.TRAIN, "w0", 0, seq, tensors={"h": h}, meta=TrainMeta(seq, seq)))


def as_bytes(frames) -> list[bytes]:
    return [bytes(f) for f in frames]


def spill_files(folder) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, names in os.walk(folder) for f in names)


def test_kept_frames_are_held_by_reference_not_copied(tmp_path):
    log = ReplayLog(memory_bytes=1 << 30, spill_dir=str(tmp_path))
    frames = sent_frames(0)
    log.keep(0, frames)
    (back,) = list(log.since(-1))
    assert all(a is b for a, b in zip(back, frames, strict=True))      # the very objects sent
    assert log.memory_bytes == sum(memoryview(f).nbytes for f in frames) and log.disk_bytes == 0
    log.close()


def test_past_the_bound_entries_spill_off_the_caller_and_replay_from_disk(tmp_path):
    log = ReplayLog(memory_bytes=0, spill_dir=str(tmp_path), name="w0")
    kept = [sent_frames(seq) for seq in range(4)]
    for seq, frames in enumerate(kept):
        log.keep(seq, frames)
    replayed = list(log.since(0))                      # waits for the thread: every entry settled
    assert len(spill_files(tmp_path)) == 4
    assert [as_bytes(f) for f in replayed] == [as_bytes(f) for f in kept[1:]]
    assert all(e.frames is None and e.path for e in log._entries)     # out of memory once on disk
    assert log.stats()["peak_disk_bytes"] == log.stats()["appended_bytes"]
    log.close()
    assert spill_files(tmp_path) == []


@pytest.mark.parametrize("how", ["overwritten", "deleted"])
def test_a_damaged_spill_of_a_kept_entry_is_refused(how, tmp_path):
    log = ReplayLog(memory_bytes=0, spill_dir=str(tmp_path))
    for seq in range(3):
        log.keep(seq, sent_frames(seq))
    log.stats()                                        # settled: the files are there
    victim = spill_files(tmp_path)[1]
    if how == "deleted":
        os.unlink(victim)
    else:
        with open(victim, "r+b") as f:
            f.seek(os.path.getsize(victim) // 2)
            f.write(b"\xa5" * 4096)
    with pytest.raises(LogDamaged, match="entry seq 1"):
        list(log.since(-1))


def test_a_kept_entry_written_to_after_its_checksum_is_refused(tmp_path):
    log = ReplayLog(memory_bytes=1 << 30)
    h = torch.zeros(50_000)
    frames = Codec("run", "secret").encode(Message(Kind.TRAIN, "w0", tensors={"h": h}, meta=TrainMeta(0, 0)))
    log.keep(0, frames)
    log.stats()                                        # the thread has checksummed it
    h[7] = 1.0                                         # a sender breaking the zero-copy contract
    with pytest.raises(LogDamaged, match=r"entry seq 0 \(in memory\) fails its checksum"):
        list(log.since(-1))


def test_a_spill_that_fails_stops_the_next_keep_and_refuses_the_replay(tmp_path, monkeypatch):
    def full_disk(path, seq, frames):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(replay_log, "_write_frames", full_disk)
    log = ReplayLog(memory_bytes=0, spill_dir=str(tmp_path))
    log.keep(0, sent_frames(0))
    with pytest.raises(LogDamaged, match="could not be spilled: .*No space left"):
        list(log.since(-1))
    with pytest.raises(OSError, match="No space left"):
        log.keep(1, sent_frames(1))


def test_prune_while_spills_are_pending_leaves_no_file(tmp_path, monkeypatch):
    gate = threading.Event()
    write = replay_log._write_frames

    def slow_write(path, seq, frames):
        gate.wait(10)
        return write(path, seq, frames)

    monkeypatch.setattr(replay_log, "_write_frames", slow_write)
    log = ReplayLog(memory_bytes=0, spill_dir=str(tmp_path))
    for seq in range(3):
        log.keep(seq, sent_frames(seq))
    log.prune(1)                                       # entries 0 and 1 go while the thread still holds them
    assert log.disk_bytes == log._entries[0].nbytes
    gate.set()
    assert [as_bytes(f) for f in log.since(1)] == [as_bytes(sent_frames(2))]
    assert len(spill_files(tmp_path)) == 1
    log.close()
    assert spill_files(tmp_path) == []


def test_the_spill_queue_is_bounded_put_waits_for_the_thread():
    gate, done = threading.Event(), []
    spiller = Spiller(lambda entry: (gate.wait(10), done.append(entry)), "t", max_bytes=100)
    spiller.put("a", 80)
    blocked = threading.Thread(target=spiller.put, args=("b", 80))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive() and spiller.pending_bytes == 80      # waits: 160 bytes would exceed 100
    gate.set()
    blocked.join(10)
    spiller.drain()
    assert done == ["a", "b"] and spiller.pending_bytes == 0
    spiller.close()

"""The replay log proves what it holds: every entry's checksum is checked before it is resent, and a spill file
damaged mid-file or at its end, cut short or deleted raises LogDamaged before anything damaged is yielded."""

from __future__ import annotations

import os
import time
import zlib

import pytest
from auglocal.workers.runtime.replay_log import UNUSABLE, LogDamaged, LogLost, ReplayLog


def frames(seq: int, size: int) -> list[bytes]:
    return [f"header {seq}".encode(), bytes([seq % 256]) * size]


def spilled_log(tmp_path, entries: int = 3, size: int = 20_000) -> tuple[ReplayLog, list[str]]:
    log = ReplayLog(memory_bytes=0, spill_dir=str(tmp_path), name="w0")
    for seq in range(entries):
        log.append(seq, frames(seq, size))
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(tmp_path) for f in names)
    assert len(files) == entries
    return log, files


def overwrite(path: str, where: str, n: int = 4096) -> None:
    """4 KiB of other bytes, in the middle of the file or at its end (size unchanged)."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2 if where == "middle" else size - n)
        f.write(b"\xa5" * n)


@pytest.mark.parametrize("where", ["middle", "end"])
def test_a_spill_file_overwritten_is_refused_before_it_is_yielded(where, tmp_path):
    log, files = spilled_log(tmp_path)
    overwrite(files[1], where)
    got = []
    with pytest.raises(LogDamaged, match=r"entry seq 1 .* fails its checksum \(damaged\)") as info:
        for entry in log.since(-1):
            got.append(entry)
    assert got == [frames(0, 20_000)]            # the intact entry before it, never the damaged one
    assert str(info.value).startswith(UNUSABLE) and isinstance(info.value, LogLost)


def test_a_deleted_or_cut_short_spill_file_is_found_before_anything_is_yielded(tmp_path):
    log, files = spilled_log(tmp_path)
    os.unlink(files[2])
    replay = log.since(-1)
    with pytest.raises(LogDamaged, match=r"entry seq 2 .* is missing"):
        next(replay)
    log2, files2 = spilled_log(tmp_path / "b")
    with open(files2[2], "r+b") as f:
        f.truncate(100)
    with pytest.raises(LogDamaged, match=r"entry seq 2 .* has 100 bytes, \d+ were written"):
        next(log2.since(-1))


def test_a_spill_file_swapped_for_another_entry_is_refused(tmp_path):
    log, files = spilled_log(tmp_path, size=1000)
    data0 = open(files[0], "rb").read()
    with open(files[1], "wb") as f:
        f.write(data0.replace(b"header 0", b"header 1"))     # same size, another entry's content
    with pytest.raises(LogDamaged, match="entry seq 1"):
        list(log.since(0))


def test_memory_entries_are_checked_too(tmp_path):
    log = ReplayLog(memory_bytes=1 << 20)
    log.append(0, frames(0, 100))
    log._entries[0].frames[1] = b"\xff" * 100          # what a bug reusing the sender's buffer would do
    with pytest.raises(LogDamaged, match=r"entry seq 0 \(in memory\) fails its checksum"):
        list(log.since(-1))


def test_an_intact_log_replays_as_before(tmp_path):
    log, _ = spilled_log(tmp_path)
    assert list(log.since(0)) == [frames(1, 20_000), frames(2, 20_000)]
    log.close()


def test_checksum_cost_on_an_8_mib_message_is_measured_against_a_copy(capsys):
    """The figure the module docstring quotes (printed with -s); CRC-32 stays within a few copies' time."""
    data = os.urandom(8 << 20)

    def best(f) -> float:
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times)

    copy = best(lambda: bytes(memoryview(data)))
    crc = best(lambda: zlib.crc32(data))
    print(f"8 MiB: copy {copy * 1e3:.2f} ms, crc32 {crc * 1e3:.2f} ms")
    assert crc < 20 * copy + 0.01

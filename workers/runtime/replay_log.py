"""A worker's replay log: the encoded messages it sent downstream since the last committed checkpoint.

When the next worker restarts from that checkpoint, this worker resends the log (one-worker recovery, see
launch/run/recovery.py), so nothing upstream of the failure has to recompute. Entries are the exact frames the
codec produced, in send order, keyed by the message's sequence number. The newest entries stay in memory
up to `memory_bytes`; past that they are written to files in `spill_dir` (one file per message), so the log
costs at most `memory_bytes` of RAM however long the checkpoint interval. `prune(seq)` drops what a
committed checkpoint made unnecessary.

Every entry carries a CRC-32 of its sequence number, frame lengths and frames, computed when it is appended
and kept in memory (never only in the file it guards). A replay checks it before each entry is resent, and
first checks that every spill file it will need is still there with its size: a spill file damaged, cut short,
replaced or deleted (a disk error, a cleaner of temporary folders, a user) raises `LogDamaged` before anything
damaged is sent, so the restarted worker is never trained on it and the coordinator falls back to the whole
restart (launch/run/recovery.py). Why CRC-32: it detects such damage, and is the cheapest check zlib offers: about
2.7 ms per 8 MiB on the 2-core test machine, against 1.1 ms for the copy the log makes anyway (BLAKE2b 14 ms,
SHA-256 5.2 ms). It is no defence against someone forging a spill file on purpose: whoever can write there
runs as this user, and can change the worker itself.

Two ways in. `append` copies the frames and checksums and spills them in line: for a caller that reuses its
buffers. `keep` is the worker's (through workers/runtime/device_log.py): it holds the very frames that were
sent, by reference, since nothing writes to them after the send (the zero-copy contract), and hands their
checksum and spill file to a background thread (workers/runtime/spiller.py), so keeping an 8 MB message costs
the step a few microseconds instead of a copy and a checksum (benchmarks/overhead.py measures both). A kept
entry waits in memory until its file is written; a replay (`since`) and `stats` first wait for the thread, so
they see every entry settled, and a spill that failed makes the replay refuse the log (LogDamaged).
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from auglocal.engine.atomic import SPACE_ERRNOS
from auglocal.workers.runtime.spiller import Spiller

_MAGIC = b"ALRLOG1\n"
_HEAD = struct.Struct("<QI")       # seq, frame count
_LENGTH = struct.Struct("<Q")
#: a kept entry this small is checksummed in line (about a microsecond): cheaper than waking the thread
INLINE_CRC_BYTES = 4096

#: every LogLost message starts with this: the coordinator (launch/run/recovery.py) reads it in a worker's error
#: report as "one-worker recovery cannot use this log: restart the whole pipeline"
UNUSABLE = "replay log unusable"


class LogLost(RuntimeError):
    """The log no longer holds what a replay asks for (pruned past it): one-worker recovery cannot work."""

    def __init__(self, detail: str):
        super().__init__(f"{UNUSABLE}: {detail}")


class LogDamaged(LogLost):
    """An entry a replay needs is damaged or missing (its spill file changed, cut short or deleted)."""


@dataclass
class _Entry:
    seq: int
    nbytes: int
    frames: list | None            # in memory, or None when spilled
    crc: int | None = 0            # checksum(seq, frames), computed at append (kept: by the thread; None until)
    path: str | None = None        # the spill file (once written)
    file_bytes: int = 0            # its size as written
    to_disk: str | None = None     # kept entry past the memory bound: the spill file the thread writes
    dropped: bool = False          # pruned or closed while the thread may still hold it


def checksum(seq: int, frames: list[bytes]) -> int:
    """CRC-32 of an entry: its seq, frame count and lengths, then every frame (see the module docstring)."""
    crc = zlib.crc32(_HEAD.pack(seq, len(frames)))
    for frame in frames:
        crc = zlib.crc32(_LENGTH.pack(_nbytes(frame)), crc)
    for frame in frames:
        crc = zlib.crc32(frame, crc)
    return crc


def _write_frames(path: str, seq: int, frames: list) -> int:
    """Write one entry's spill file; returns its size."""
    with open(path, "wb") as f:
        f.write(_MAGIC + _HEAD.pack(seq, len(frames)))
        for frame in frames:
            f.write(_LENGTH.pack(len(frame)))
        for frame in frames:
            f.write(frame)
    return len(_MAGIC) + _HEAD.size + _LENGTH.size * len(frames) + sum(_nbytes(f) for f in frames)


def _nbytes(frame) -> int:
    return frame.nbytes if isinstance(frame, memoryview) else len(frame)


def _read_frames(entry: _Entry) -> list[bytes]:
    """The frames of a spilled entry, or LogDamaged when its file is gone, not its size, or fails the check."""
    where = f"entry seq {entry.seq} ({entry.path})"
    try:
        with open(entry.path, "rb") as f:
            data = f.read(entry.file_bytes + 1)
    except OSError as err:
        raise LogDamaged(f"{where} cannot be read: {err.strerror or err}") from None
    if len(data) != entry.file_bytes:
        raise LogDamaged(f"{where} has {len(data)} bytes, {entry.file_bytes} were written (cut short or replaced)")
    frames: list[bytes] = []
    try:
        if not data.startswith(_MAGIC):
            raise ValueError("no replay log header")
        offset = len(_MAGIC)
        seq, count = _HEAD.unpack_from(data, offset)
        offset += _HEAD.size
        lengths = [_LENGTH.unpack_from(data, offset + i * _LENGTH.size)[0] for i in range(count)]
        offset += count * _LENGTH.size
        for n in lengths:
            frames.append(data[offset:offset + n])
            offset += n
        if seq != entry.seq or offset != len(data):
            raise ValueError("header does not match the entry")
    except (ValueError, struct.error, MemoryError, OverflowError):
        raise LogDamaged(f"{where} fails its checksum (damaged)") from None
    _check(entry, frames)
    return frames


def _check(entry: _Entry, frames: list[bytes]) -> None:
    if checksum(entry.seq, frames) != entry.crc:
        where = f" ({entry.path})" if entry.path else " (in memory)"
        raise LogDamaged(f"entry seq {entry.seq}{where} fails its checksum (damaged)")


def spill_failure(worker: str, spill_dir: str | None, err: OSError) -> tuple[str, bool]:
    """A worker's error report for a spill that failed: what to tell the user, and whether a restart could help
    (not when the disk is full: it would fill the same disk again)."""
    full = err.errno in SPACE_ERRNOS
    hint = "; free space there, give --replay-spill-dir on a disk with room, or raise --replay-log-mb" if full else ""
    return (f"{worker} cannot spill its replay log into {spill_dir or tempfile.gettempdir()}: "
            f"{err.strerror or err}{hint}", not full)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class ReplayLog:
    """Frames sent since the last commit: in memory up to `memory_bytes`, spilled to `spill_dir` past it."""

    def __init__(self, memory_bytes: int, spill_dir: str | None = None, name: str = "log"):
        if memory_bytes < 0:
            raise ValueError(f"replay log memory bound must be >= 0 bytes, got {memory_bytes}")
        self.memory_bound = memory_bytes
        self._spill_root = spill_dir
        self._spill_dir: str | None = None
        self._name = name
        self._entries: deque[_Entry] = deque()
        self.memory_bytes = 0
        self.disk_bytes = 0
        self.pruned_to = -1            # every entry with seq <= this is gone
        self.peak_memory_bytes = 0
        self.peak_disk_bytes = 0
        self.appended_bytes = 0
        self.interval_bytes = 0        # appended since the last prune
        self.max_interval_bytes = 0
        self.intervals = 0
        self._lock = threading.Lock()  # an entry's move to disk (the thread) against its drop (prune, close)
        self._spiller = Spiller(self._settle, name)

    def __len__(self) -> int:
        return len(self._entries)

    def _spill_path(self, seq: int) -> str:
        if self._spill_dir is None:
            if self._spill_root is not None:
                os.makedirs(self._spill_root, exist_ok=True)
            self._spill_dir = tempfile.mkdtemp(prefix=f"replay-{self._name}-", dir=self._spill_root)
        return os.path.join(self._spill_dir, f"{seq:012d}.frames")

    def _admit(self, seq: int, nbytes: int) -> bool:
        """Check that `seq` grows and count a new entry's bytes as appended; True when it fits in memory."""
        if self._entries and seq <= self._entries[-1].seq:
            raise ValueError(f"replay log entries must grow: {seq} after {self._entries[-1].seq}")
        self.appended_bytes += nbytes
        self.interval_bytes += nbytes
        return self.memory_bytes + nbytes <= self.memory_bound

    def _hold(self, entry: _Entry, in_memory: bool) -> None:
        """Add an admitted entry to the log and to the memory or disk figures."""
        self._entries.append(entry)
        if in_memory:
            self.memory_bytes += entry.nbytes
            self.peak_memory_bytes = max(self.peak_memory_bytes, self.memory_bytes)
        else:
            self.disk_bytes += entry.nbytes
            self.peak_disk_bytes = max(self.peak_disk_bytes, self.disk_bytes)

    def append(self, seq: int, frames: list) -> None:
        """Keep a copy of `frames` (bytes-like; copied, so the sender may reuse its tensors) as entry `seq`."""
        data = [bytes(f) for f in frames]
        nbytes = sum(len(f) for f in data)
        in_memory = self._admit(seq, nbytes)
        crc = checksum(seq, data)
        if in_memory:
            self._hold(_Entry(seq, nbytes, data, crc), True)
        else:
            path = self._spill_path(seq)
            self._hold(_Entry(seq, nbytes, None, crc, path, _write_frames(path, seq, data)), False)

    def keep(self, seq: int, frames: list) -> None:
        """Hold `frames` (bytes-like, never written to again: the frames a send used) as entry `seq`, by
        reference; their checksum and, past the memory bound, their spill file come from the background
        thread. Raises the OSError of an earlier spill that failed (a full disk)."""
        frames = list(frames)
        nbytes = sum(_nbytes(frame) for frame in frames)
        if self._admit(seq, nbytes):
            entry = _Entry(seq, nbytes, frames, checksum(seq, frames) if nbytes <= INLINE_CRC_BYTES else None)
            self._hold(entry, True)
        else:
            entry = _Entry(seq, nbytes, frames, None, to_disk=self._spill_path(seq))
            self._hold(entry, False)
        if entry.crc is None:
            self._spiller.put(entry, nbytes)

    def _settle(self, entry: _Entry) -> None:
        """On the thread: a kept entry's checksum, then its spill file; it leaves memory once the file is written."""
        if entry.dropped:
            return
        entry.crc = checksum(entry.seq, entry.frames)
        if entry.to_disk is None:
            return
        size = _write_frames(entry.to_disk, entry.seq, entry.frames)
        with self._lock:
            if entry.dropped:              # pruned meanwhile: nobody will read the file
                _unlink(entry.to_disk)
                return
            entry.path, entry.file_bytes, entry.frames = entry.to_disk, size, None

    def _settled(self) -> None:
        """Wait for the thread's work on every kept entry; LogDamaged when a spill failed."""
        self._spiller.drain()
        if self._spiller.error is not None:
            raise LogDamaged(f"an entry could not be spilled: {self._spiller.error}")

    def since(self, seq: int) -> Iterator[list[bytes]]:
        """The frames of every entry after `seq`, oldest first (spilled ones read back from disk), each checked
        against its checksum before it is yielded. Before the first, every spill file needed is checked to be
        there with its size, so a deleted or cut-short one is found before anything is resent. Raises LogLost
        when the log was pruned past `seq`, LogDamaged (a LogLost) for a damaged or missing entry."""
        self._settled()
        if seq < self.pruned_to:
            raise LogLost(f"replay from seq {seq} asked, but the log was pruned up to {self.pruned_to}")
        entries = [e for e in self._entries if e.seq > seq]
        for entry in entries:
            if entry.path is not None:
                self._check_file(entry)
        for entry in entries:
            if entry.frames is None:
                yield _read_frames(entry)
            else:
                _check(entry, entry.frames)
                yield entry.frames

    @staticmethod
    def _check_file(entry: _Entry) -> None:
        try:
            size = os.stat(entry.path).st_size
        except OSError as err:
            raise LogDamaged(f"entry seq {entry.seq} ({entry.path}) is missing: {err.strerror or err}") from None
        if size != entry.file_bytes:
            raise LogDamaged(f"entry seq {entry.seq} ({entry.path}) has {size} bytes, {entry.file_bytes} were "
                             "written (cut short or replaced)")

    def prune(self, seq: int) -> None:
        """Drop every entry up to `seq` (a committed checkpoint marker's): no replay will ask for them."""
        while self._entries and self._entries[0].seq <= seq:
            self._drop(self._entries.popleft())
        self.pruned_to = max(self.pruned_to, seq)
        self.max_interval_bytes = max(self.max_interval_bytes, self.interval_bytes)
        self.interval_bytes = 0
        self.intervals += 1

    def _drop(self, entry: _Entry) -> None:
        with self._lock:
            entry.dropped = True
            if entry.path is None and entry.to_disk is None:
                self.memory_bytes -= entry.nbytes
                return
            self.disk_bytes -= entry.nbytes
            if entry.path is not None:
                _unlink(entry.path)

    def close(self) -> None:
        """Remove every entry and the spill folder."""
        while self._entries:
            self._drop(self._entries.popleft())
        self._spiller.close()
        if self._spill_dir is not None:
            try:
                os.rmdir(self._spill_dir)
            except OSError:
                pass

    def stats(self) -> dict[str, int]:
        """What the log cost: peaks in memory and on disk, bytes appended, the largest checkpoint interval."""
        self._spiller.drain()
        return {"peak_memory_bytes": self.peak_memory_bytes, "peak_disk_bytes": self.peak_disk_bytes,
                "appended_bytes": self.appended_bytes, "intervals": self.intervals,
                "max_interval_bytes": max(self.max_interval_bytes, self.interval_bytes)}

"""A worker's replay log: the encoded messages it sent downstream since the last committed checkpoint.

When the next worker restarts from that checkpoint, this worker resends the log (one-worker recovery, see
launch/recovery.py), so nothing upstream of the failure has to recompute. Entries are the exact frames the
codec produced, in send order, keyed by the message's sequence number. The newest entries stay in memory
up to `memory_bytes`; past that they are written to files in `spill_dir` (one file per message), so the log
costs at most `memory_bytes` of RAM however long the checkpoint interval. `prune(seq)` drops what a
committed checkpoint made unnecessary.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")


class LogLost(RuntimeError):
    """The log no longer holds what a replay asks for (pruned past it): one-worker recovery cannot work."""


@dataclass
class _Entry:
    seq: int
    nbytes: int
    frames: list[bytes] | None     # in memory, or None when spilled
    path: str | None = None        # the spill file


def _write_frames(path: str, frames: list[bytes]) -> None:
    with open(path, "wb") as f:
        f.write(_COUNT.pack(len(frames)))
        for frame in frames:
            f.write(_LENGTH.pack(len(frame)))
        for frame in frames:
            f.write(frame)


def _read_frames(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        (count,) = _COUNT.unpack(f.read(_COUNT.size))
        lengths = [_LENGTH.unpack(f.read(_LENGTH.size))[0] for _ in range(count)]
        return [f.read(n) for n in lengths]


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

    def __len__(self) -> int:
        return len(self._entries)

    def _spill_path(self, seq: int) -> str:
        if self._spill_dir is None:
            if self._spill_root is not None:
                os.makedirs(self._spill_root, exist_ok=True)
            self._spill_dir = tempfile.mkdtemp(prefix=f"replay-{self._name}-", dir=self._spill_root)
        return os.path.join(self._spill_dir, f"{seq:012d}.frames")

    def append(self, seq: int, frames: list) -> None:
        """Keep a copy of `frames` (bytes-like; copied, so the sender may reuse its tensors) as entry `seq`."""
        if self._entries and seq <= self._entries[-1].seq:
            raise ValueError(f"replay log entries must grow: {seq} after {self._entries[-1].seq}")
        data = [bytes(f) for f in frames]
        nbytes = sum(len(f) for f in data)
        self.appended_bytes += nbytes
        self.interval_bytes += nbytes
        if self.memory_bytes + nbytes <= self.memory_bound:
            self._entries.append(_Entry(seq, nbytes, data))
            self.memory_bytes += nbytes
            self.peak_memory_bytes = max(self.peak_memory_bytes, self.memory_bytes)
        else:
            path = self._spill_path(seq)
            _write_frames(path, data)
            self._entries.append(_Entry(seq, nbytes, None, path))
            self.disk_bytes += nbytes
            self.peak_disk_bytes = max(self.peak_disk_bytes, self.disk_bytes)

    def since(self, seq: int) -> Iterator[list[bytes]]:
        """The frames of every entry after `seq`, oldest first (spilled ones read back from disk)."""
        if seq < self.pruned_to:
            raise LogLost(f"replay from seq {seq} asked, but the log was pruned up to {self.pruned_to}")
        for entry in list(self._entries):
            if entry.seq > seq:
                yield entry.frames if entry.frames is not None else _read_frames(entry.path)

    def prune(self, seq: int) -> None:
        """Drop every entry up to `seq` (a committed checkpoint marker's): no replay will ask for them."""
        while self._entries and self._entries[0].seq <= seq:
            self._drop(self._entries.popleft())
        self.pruned_to = max(self.pruned_to, seq)
        self.max_interval_bytes = max(self.max_interval_bytes, self.interval_bytes)
        self.interval_bytes = 0
        self.intervals += 1

    def _drop(self, entry: _Entry) -> None:
        if entry.frames is not None:
            self.memory_bytes -= entry.nbytes
        else:
            self.disk_bytes -= entry.nbytes
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """Remove every entry and the spill folder."""
        while self._entries:
            self._drop(self._entries.popleft())
        if self._spill_dir is not None:
            try:
                os.rmdir(self._spill_dir)
            except OSError:
                pass

    def stats(self) -> dict[str, int]:
        """What the log cost: peaks in memory and on disk, bytes appended, the largest checkpoint interval."""
        return {"peak_memory_bytes": self.peak_memory_bytes, "peak_disk_bytes": self.peak_disk_bytes,
                "appended_bytes": self.appended_bytes, "intervals": self.intervals,
                "max_interval_bytes": max(self.max_interval_bytes, self.interval_bytes)}

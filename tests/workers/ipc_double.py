"""A CPU double of CUDA IPC memory for workers/links/paths/cuda_ipc.py: slots carved out of shared segments, as the
caching
allocator carves them, so the path's slot, handle, offset and event logic runs in CI without a GPU.

A segment is one file in a folder both ends can read (shared memory mapped by `torch.from_file(shared=True)`);
its path is the segment's *handle*. `allocate` takes blocks out of a segment first-fit, rounded up to 512 bytes
(the caching allocator's small-block rounding) and starts a new segment only when no free range fits, so two
slots of one link sit at two offsets of one handle, exactly the case a cache keyed by handle alone gets wrong.
A dropped slot's block goes back to its segment (a grown slot's old range may be handed out again).
`share` gives the record `UntypedStorage._share_cuda_()` gives (device, handle, size, offset, ...), `open` maps
the segment (the process's own mapping when it made it) and returns the view at that offset. CPU copies are
synchronous, so events carry no work: within one process an event handle names the very event the sender
recorded (so the stream checker of tests/workers/stream_check.py sees the wait), across processes it opens an
event with nothing to wait for. Stream operations use a CpuStreams double (optionally with a checker).
"""

from __future__ import annotations

import os
import secrets
import threading
import weakref

import torch

from tests.workers.stream_check import CpuEvent, CpuStreams

ROUND = 512

_SEGMENTS: dict[str, torch.Tensor] = {}        # this process's mappings, by path
_EVENTS: dict[bytes, CpuEvent] = {}            # this process's events, by handle
_LOCK = threading.Lock()


def _mapping(path: str, nbytes: int | None = None) -> torch.Tensor:
    with _LOCK:
        segment = _SEGMENTS.get(path)
        if segment is None:
            size = nbytes if nbytes is not None else os.path.getsize(path)
            segment = _SEGMENTS[path] = torch.from_file(path, shared=True, size=size, dtype=torch.uint8)
        return segment


class _Segment:
    def __init__(self, path: str, nbytes: int):
        with open(path, "wb") as f:
            f.truncate(nbytes)
        self.path, self.nbytes = path, nbytes
        self.tensor = _mapping(path, nbytes)
        self.free = [(0, nbytes)]                # (offset, size), sorted by offset

    def take(self, n: int) -> int | None:
        for i, (offset, size) in enumerate(self.free):
            if size >= n:
                self.free[i:i + 1] = [(offset + n, size - n)] if size > n else []
                return offset
        return None

    def give_back(self, offset: int, n: int) -> None:
        self.free.append((offset, n))
        self.free.sort()
        merged = []
        for o, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged


class CpuIpcMemory:
    """CudaMemory's interface over file-backed shared segments in `directory` (see the module docstring)."""

    device = torch.device("cpu")

    def __init__(self, directory: str, segment_bytes: int = 1 << 16, streams: CpuStreams | None = None):
        self.directory, self.segment_bytes = directory, segment_bytes
        self.streams = streams if streams is not None else CpuStreams()
        self.segments: list[_Segment] = []
        self._where: dict[int, tuple[_Segment, int]] = {}     # slot data_ptr -> (segment, offset)

    def allocate(self, nbytes: int) -> torch.Tensor:
        n = -(-nbytes // ROUND) * ROUND
        for segment in self.segments:
            if (offset := segment.take(n)) is not None:
                break
        else:
            name = os.path.join(self.directory, f"segment-{os.getpid()}-{secrets.token_hex(4)}")
            segment = _Segment(name, max(self.segment_bytes, n))
            self.segments.append(segment)
            offset = segment.take(n)
        slot = segment.tensor[offset:offset + nbytes]
        self._where[slot.data_ptr()] = (segment, offset)
        weakref.finalize(slot, segment.give_back, offset, n)
        return slot

    def share(self, slot: torch.Tensor) -> list:
        segment, offset = self._where[slot.data_ptr()]
        return [0, segment.path.encode(), slot.numel(), offset, b"", 0, b"", False]

    @staticmethod
    def open(storage: list) -> torch.Tensor:
        _device, handle, size, offset = storage[:4]
        return _mapping(handle.decode())[offset:offset + size]

    @staticmethod
    def event() -> CpuEvent:
        event = CpuEvent()
        event.handle = secrets.token_bytes(16)
        _EVENTS[event.handle] = event
        return event

    @staticmethod
    def event_handle(event: CpuEvent) -> bytes:
        return event.handle

    @staticmethod
    def open_event(handle: bytes) -> CpuEvent:
        return _EVENTS.get(handle) or CpuEvent()

    def close(self) -> None:
        for segment in self.segments:
            with _LOCK:
                _SEGMENTS.pop(segment.path, None)
            try:
                os.unlink(segment.path)
            except FileNotFoundError:
                pass

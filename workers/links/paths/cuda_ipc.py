"""CUDA IPC tensor path between GPU processes of one host: preallocated slots, interprocess events, no host copy.

The sender owns `window` device slots per link (two by default: the slots *are* the credit window). Message k
uses slot k mod window: a message may only be sent when the window has room, i.e. when the receiver's credit
for message k - window has come back, so that slot is free. The sender copies the tensors' bytes into the
slot on its current stream (device to device), records the slot's interprocess CUDA event, and only then
queues the header, whose route frame names the slot's memory handle, the event's handle and the offsets. The
receiver opens the slot (once per handle), makes its stream wait on the event (no host sync on the sender's
side), copies the bytes out to its own device, and synchronises its stream before it returns the credit, so
the slot is free again when the sender may reuse it. No byte touches host memory.

A slot grows (a new allocation, a new handle in the route) when a larger message comes; the receiver keeps
the slots it has opened, keyed by (memory handle, offset, size) as torch's own reductions key by handle and
offset (torch/multiprocessing/reductions.py): the caching allocator carves several slots out of one segment,
and they share the segment's handle and differ only in offset, so a cache by handle alone would read slot 1
from slot 0's bytes, and a slot grown inside the same segment from the stale, shorter view.

The device side (allocate a slot, share and open its handle, interprocess events) is `CudaMemory`, and stream
operations go through workers/links/streams.py: `CudaIpcPath(memory=...)` takes a double, so the slot, handle, offset
and event logic runs on CPU in CI (tests/workers/ipc_double.py shares one file-backed buffer the way the caching
allocator shares a segment). Used through `Link(transport="cuda-ipc")` and workers/links/paths/oob_link.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from auglocal.workers.links import streams
from auglocal.workers.links.paths.oob_link import as_byte_tensor
from auglocal.workers.wire.messages import MessageError

_ALIGN = 256   # CUDA allocation granularity for tensor views: every tensor starts aligned for any dtype


def _offsets(sizes: list[int]) -> tuple[list[int], int]:
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += -(-n // _ALIGN) * _ALIGN
    return offsets, total


def slot_key(storage: list) -> tuple:
    """What tells one opened slot from another: its segment's handle, its offset and size in that segment
    (`storage` is `UntypedStorage._share_cuda_()`'s record: device, handle, size, offset, ...)."""
    return (storage[1], storage[3], storage[2])


class CudaMemory:
    """Device memory and interprocess events of the current CUDA device: the real side of the seam."""

    def __init__(self):
        if not torch.cuda.is_available():
            raise RuntimeError("the cuda-ipc transport needs a CUDA GPU in both processes; use ipc or gloo on CPU")
        self.device = torch.device("cuda", torch.cuda.current_device())

    @property
    def streams(self):
        return streams.active()

    def allocate(self, nbytes: int) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8, device=self.device)

    @staticmethod
    def share(slot: torch.Tensor) -> list:
        return list(slot.untyped_storage()._share_cuda_())

    @staticmethod
    def open(storage: list) -> torch.Tensor:
        shared = torch.UntypedStorage._new_shared_cuda(*storage)
        return torch.empty(0, dtype=torch.uint8, device=shared.device).set_(shared, 0, (shared.nbytes(),), (1,))

    @staticmethod
    def event():
        return torch.cuda.Event(interprocess=True)

    @staticmethod
    def event_handle(event) -> bytes:
        return event.ipc_handle()

    def open_event(self, handle: bytes):
        return torch.cuda.Event.from_ipc_handle(self.device, handle)


class CudaIpcPath:
    """Tensor bytes through CUDA IPC slots; see the module docstring for the protocol. `memory` defaults to
    the current CUDA device; `key` is how opened slots are told apart (a test injects the old, wrong one)."""

    def __init__(self, window: int, receiving: bool, memory=None, key: Callable[[list], object] = slot_key):
        self.memory = memory if memory is not None else CudaMemory()
        self.device = self.memory.device
        self.window = window
        self.receiving = receiving
        self._key = key
        self._slots: list[torch.Tensor | None] = [None] * window
        self._handles: list[list | None] = [None] * window
        self._events = [] if receiving else [self.memory.event() for _ in range(window)]
        self._event_handles = [self.memory.event_handle(event) for event in self._events]
        self._next = 0
        self._opened: dict[object, torch.Tensor] = {}
        self._opened_events: dict[bytes, object] = {}

    def warm_send(self) -> None:
        """Nothing to warm: slots are allocated at the first message (their size is known then)."""

    def warm_recv(self) -> None:
        """Nothing to warm: handles are opened when first named."""

    def prepare(self, frames: list) -> dict:
        """Copy one message's tensor bytes into the next slot and record its event; returns the route."""
        tensors = [as_byte_tensor(f) for f in frames]
        offsets, total = _offsets([t.numel() for t in tensors])
        index = self._next   # advanced only once the header is out (send): a refused send reuses this slot
        slot = self._slots[index]
        if slot is None or slot.numel() < total:
            slot = self.memory.allocate(max(total, _ALIGN))
            self._slots[index] = slot
            self._handles[index] = self.memory.share(slot)
        ops = self.memory.streams
        stream = ops.current(self.device)
        for tensor, offset in zip(tensors, offsets, strict=True):
            if tensor.numel():
                slot[offset:offset + tensor.numel()].copy_(tensor, non_blocking=True)
        ops.record(self._events[index], stream)
        return {"path": "cuda-ipc", "slot": index, "storage": self._handles[index],
                "event": self._event_handles[index], "offsets": offsets}

    def send(self, frames: list) -> tuple:
        """The header naming the slot is out: the next message takes the next slot. The bytes already sit in
        this one, which stays the sender's until the credit (nothing else to hold)."""
        self._next = (self._next + 1) % self.window
        return ()

    @staticmethod
    def complete(pending: tuple) -> None:
        """Nothing to wait for: the receiver synchronised its copy before returning the credit."""

    def receive(self, route: dict, sizes: list[int], peer: str) -> list[torch.Tensor]:
        """Wait on the slot's event, copy the message's bytes out to this device, then free the slot."""
        storage, event, offsets = route.get("storage"), route.get("event"), route.get("offsets")
        if (route.get("path") != "cuda-ipc" or not isinstance(storage, list) or len(storage) != 8
                or not isinstance(event, bytes) or not isinstance(offsets, list) or len(offsets) != len(sizes)):
            raise MessageError(peer, "route", "expected a cuda-ipc route with storage, event and offsets")
        expected, total = _offsets(sizes)
        if offsets != expected or total > storage[2]:
            raise MessageError(peer, "route", f"offsets {offsets} do not fit the header's tensor sizes {sizes}")
        slot = self._open_slot(storage)
        ipc_event = self._opened_events.get(event)
        if ipc_event is None:
            ipc_event = self._opened_events[event] = self.memory.open_event(event)
        ops = self.memory.streams
        stream = ops.current(self.device)
        ops.wait_event(stream, ipc_event)
        buffers = [slot[o:o + n].to(self.device, copy=True) for o, n in zip(offsets, sizes, strict=True)]
        ops.synchronize(stream)   # our copies are done: the credit may hand the slot back
        return buffers

    def _open_slot(self, storage: list) -> torch.Tensor:
        key = self._key(storage)
        slot = self._opened.get(key)
        if slot is None:
            slot = self._opened[key] = self.memory.open(storage)
        return slot

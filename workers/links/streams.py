"""The stream operations of the GPU paths, behind one seam so a CPU double can run and check them without a GPU.

Thread workers (workers/runtime/host.py, workers/links/threadlink.py), the cuda-ipc path
(workers/links/paths/cuda_ipc.py) and the replay
log's device copies (workers/runtime/device_log.py) order their work across CUDA streams with events, `wait_stream`
and `record_stream`. A mistake there (a consumer reading a tensor before the producer's kernels finished, or the
caching allocator handing a block out while another stream still reads it) corrupts data silently and only on
a GPU. So they never call `torch.cuda` for streams directly: they ask `active()`, which is `CudaStreams` in a
run, and a CPU double in tests (tests/workers/stream_check.py: a stream double, as torchgpipe's CPUStream, plus
a checker that records which stream produced each tensor and fails a cross-stream use without a wait).

`applies(device)` says whether a device has streams at all: with CudaStreams only CUDA devices do, and every
helper here does nothing for a host tensor, so the CPU paths pay nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class CudaStreams:
    """The real operations: torch.cuda streams and events."""

    def applies(self, device: torch.device) -> bool:
        return device.type == "cuda"

    def current(self, device: torch.device):
        return torch.cuda.current_stream(device)

    def new(self, device: torch.device):
        return torch.cuda.Stream(device)

    def using(self, stream):
        return torch.cuda.stream(stream)

    def event(self, interprocess: bool = False):
        return torch.cuda.Event(interprocess=interprocess)

    def record(self, event, stream) -> None:
        event.record(stream)

    def wait_event(self, stream, event) -> None:
        stream.wait_event(event)

    def wait_stream(self, stream, other) -> None:
        stream.wait_stream(other)

    def record_stream(self, tensor: torch.Tensor, stream) -> None:
        tensor.record_stream(stream)

    def synchronize(self, stream) -> None:
        stream.synchronize()

    def query(self, event) -> bool:
        return event.query()

    def wait_host(self, event) -> None:
        """Block the host until `event`'s work is done."""
        event.synchronize()

    def copy_async(self, dst: torch.Tensor, src: torch.Tensor, stream) -> None:
        """Queue `dst.copy_(src)` on `stream`; the host goes on at once."""
        with torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)

    def host_buffer(self, tensor: torch.Tensor) -> torch.Tensor:
        """An empty host tensor to copy `tensor` into asynchronously: pinned (from torch's caching host
        allocator), so the copy is a DMA the stream runs while the host goes on."""
        return torch.empty_like(tensor, device="cpu", pin_memory=True)


_ACTIVE: list = [CudaStreams()]


def active():
    """The stream operations in force (CudaStreams unless a test installed a double)."""
    return _ACTIVE[-1]


@contextlib.contextmanager
def installed(streams) -> Iterator[object]:
    """Use `streams` (a double) for every stream operation of the process while the block runs."""
    _ACTIVE.append(streams)
    try:
        yield streams
    finally:
        _ACTIVE.remove(streams)


@contextlib.contextmanager
def worker_stream(device: torch.device) -> Iterator[object | None]:
    """Run the block on a fresh stream of `device` (a thread worker's own), ordered after everything already
    queued on the calling thread's current stream (the stage's weights were written there when it was built).
    Nothing happens on a device without streams."""
    ops = active()
    if not ops.applies(device):
        yield None
        return
    stream = ops.new(device)
    ops.wait_stream(stream, ops.current(device))
    with ops.using(stream):
        yield stream


def handoff(tensors: dict[str, torch.Tensor]):
    """An event on the producer's current stream after the kernels that computed `tensors` (None when no
    tensor is on a device with streams): the consumer waits on it before it reads them."""
    ops = active()
    for t in tensors.values():
        if ops.applies(t.device):
            event = ops.event()
            ops.record(event, ops.current(t.device))
            return event
    return None


def adopt(tensors: dict[str, torch.Tensor], event) -> None:
    """The consumer's side of `handoff`: its current stream waits for the producer's kernels, and each tensor
    is recorded as used on that stream, so the producer dropping its reference never lets the caching
    allocator hand the block out while the consumer may still read it."""
    if event is None:
        return
    ops = active()
    for t in tensors.values():
        if ops.applies(t.device):
            stream = ops.current(t.device)
            ops.wait_event(stream, event)
            ops.record_stream(t, stream)

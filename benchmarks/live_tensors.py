"""Peak of live tensor bytes over a block of code: the CPU counterpart of CUDA's max_memory_allocated.

Resident memory (VmHWM) depends on the allocator: glibc keeps freed blocks in its heap, so a process's peak
RSS says as much about malloc's policy as about the training rule. The figure that compares with the paper's
GPU `max_memory_allocated` is the largest number of tensor bytes alive at once. It is measured here from
torch.profiler's memory events (`profile_memory=True`): torch's CPU allocator reports every allocation and
every free with its size at the moment it happens, including the tensors autograd saves and frees in C++
where no Python object ever sees them (which is why a TorchDispatchMode with weakref finalizers on Python
tensors would miss or mistime frees). The running sum of those sizes, in time order, is the live bytes
allocated inside the block; its maximum is the peak.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity, profile


@dataclass
class LiveBytes:
    """Tensor bytes allocated inside a tracked block, relative to its start (tensors alive before not counted).

    `peak` is the most alive at any moment, `end` what is still alive when the block ends; `allocations`
    counts allocator calls seen.
    """

    peak: int = 0
    end: int = 0
    allocations: int = 0


def live_bytes_from_events(sizes: list[tuple[int, int]]) -> LiveBytes:
    """Peak and final running sum of (time_ns, signed bytes) allocator events, taken in time order."""
    result = LiveBytes()
    live = 0
    for _, nbytes in sorted(sizes, key=lambda e: e[0]):   # stable: same-time events keep their order
        live += nbytes
        result.peak = max(result.peak, live)
        result.allocations += nbytes > 0
    result.end = live
    return result


@contextmanager
def track_live_bytes(device: str = "cpu") -> Iterator[LiveBytes]:
    """Track tensor allocations on `device` ('cpu' or 'cuda') inside the with-block; fills the yielded
    LiveBytes when the block ends. The profiler slows the block down: time nothing inside it."""
    wanted = torch.device(device).type.upper()
    result = LiveBytes()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        yield result
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type().name == wanted]
    found = live_bytes_from_events(events)
    result.peak, result.end, result.allocations = found.peak, found.end, found.allocations


def tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one storage count once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())

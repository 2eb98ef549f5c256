"""A CPU double for CUDA streams and a stream-discipline checker, for tests (the GPU paths without a GPU).

`CpuStreams` implements workers/links/streams.py's operations for CPU tensors, the way torchgpipe's CPUStream lets
its stream logic run on CPU: streams, events, `wait_stream`, `record_stream` are objects with no device work.
With a `StreamChecker`, it also checks the discipline those operations exist for. Every torch op run under
`watching()` (entered by `CpuStreams.using` for a thread worker's stream, or by a test for its own thread) is
seen by a TorchDispatchMode and attributed to the thread's current stream double. The checker keeps, like the
CUDA sanitizer, a vector clock per stream (which op of every other stream it is ordered after, through
`wait_event`, `wait_stream` or a synchronize) and, per tensor storage, the stream and op that last wrote it:

- a read or write on stream T of memory last written by op k of stream S != T, when T is not ordered after
  that op, is a violation (a missing wait);
- memory freed (seen through a finalizer on its storage) while a stream other than its allocating stream used
  it, with no `record_stream` for that stream and the allocating stream not ordered after that use, is a
  violation: the caching allocator would give the block back to the allocating stream, which may reuse it
  while the other stream still reads it.

What is *not* a use, as on a GPU where it launches no kernel: a view op (slice, view, detach: metadata only;
cuda-ipc slices a slot it opens before it waits on the slot's event), and allocating pinned host memory
(`host_buffer`: its free is never judged either, since torch's caching host allocator keeps a block until the
events it records for every async copy through it have completed). The host waiting on an event
(`wait_host`, or a `query` that says done) or synchronizing a stream orders everything after it.

Memory is tracked per storage (the address a storage starts at, dropped when it is freed), so two slices of
one storage are one block: a test of a sliced buffer (the cuda-ipc double's segment) sends one message at a
time.

Violations are collected (`violations`) and `check()` raises them as one AssertionError. Within one stream, or
between streams that waited properly, nothing is reported, so the real thread-worker path passes.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten


class CpuStream:
    """A stream double: a name and a vector clock (its own op count, and what it is ordered after)."""

    _ids = itertools.count()

    def __init__(self, name: str = ""):
        self.id = next(self._ids)
        self.name = name or f"stream{self.id}"
        self.clock: dict[int, int] = {self.id: 0}

    def __repr__(self) -> str:
        return f"<CpuStream {self.name}>"


class CpuEvent:
    """An event double: the recording stream's clock at the record (None until recorded)."""

    def __init__(self):
        self.clock: dict[int, int] | None = None


@dataclass
class _Block:
    alloc: int | None                # stream id that allocated it (None: pinned host memory)
    write: tuple[int, int] | None    # (stream id, op) of the last write (None: not written yet)
    used: dict[int, int] = field(default_factory=dict)    # stream id -> its last op that used the block
    recorded: set[int] = field(default_factory=set)       # streams named by record_stream
    host: bool = False                                     # pinned host memory (StreamChecker.track_host)


def _key(t: torch.Tensor) -> int | None:
    if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or t.layout != torch.strided or not t.numel():
        return None
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


class StreamChecker:
    """The happens-before bookkeeping of CpuStreams; see the module docstring for what it reports."""

    def __init__(self):
        self.lock = threading.RLock()
        self.blocks: dict[int, _Block] = {}
        self.floor: dict[int, int] = {}          # a host synchronize: everything up to here is done
        self.streams: dict[int, CpuStream] = {}
        self.violations: list[str] = []
        self.cross_stream_uses = 0               # checked uses of another stream's memory (a test's sanity)
        self.closed = False                      # set by check(): what is freed at teardown is not judged
        self.local = threading.local()

    def _ordered(self, stream: CpuStream, other: int, op: int) -> bool:
        return other == stream.id or stream.clock.get(other, 0) >= op or self.floor.get(other, 0) >= op

    def op(self, stream: CpuStream, reads: list[torch.Tensor], writes: list[torch.Tensor],
           fresh: list[torch.Tensor], name: str) -> None:
        with self.lock:
            self.streams[stream.id] = stream
            stream.clock[stream.id] += 1
            k = stream.clock[stream.id]
            for t in reads + writes:
                block = self.blocks.get(key := _key(t))
                if key is None or block is None:
                    continue
                if block.write is None:
                    block.used[stream.id] = k
                    continue
                writer, wop = block.write
                if writer != stream.id:
                    self.cross_stream_uses += 1
                    if not self._ordered(stream, writer, wop):
                        self._report(f"{name} on {stream.name} uses memory that op {wop} of "
                                     f"{self.streams[writer].name} wrote, without a wait on it")
                block.used[stream.id] = k
            for t in writes:
                if (key := _key(t)) is not None and key in self.blocks:
                    self.blocks[key].write = (stream.id, k)
                elif key is not None:   # memory made outside any watched thread: its first write allocates it
                    self._track(key, t, stream, k)
            for t in fresh:
                if (key := _key(t)) is not None:
                    self._track(key, t, stream, k)

    def _track(self, key: int, t: torch.Tensor, stream: CpuStream, k: int) -> None:
        block = self.blocks[key] = _Block(stream.id, (stream.id, k), {stream.id: k})
        weakref.finalize(t.untyped_storage(), self._freed, key, block)   # fires when the memory is freed

    def _freed(self, key: int, block: _Block) -> None:
        """The block goes back to its allocating stream's pool: that stream may reuse it at once, so every
        other stream that used it must be named by record_stream or be ordered before that stream now."""
        with self.lock:
            if self.blocks.get(key) is block:
                del self.blocks[key]
            if block.host:
                return
            alloc = self.streams.get(block.alloc)
            for user, uop in block.used.items():
                if (alloc is not None and user != block.alloc and user not in block.recorded
                        and not self._ordered(alloc, user, uop)):
                    self._report(f"memory of {alloc.name} was freed while {self.streams[user].name} may still "
                                 "use it: no record_stream for that stream")

    def _report(self, violation: str) -> None:
        if not self.closed:
            self.violations.append(violation)

    def record(self, event: CpuEvent, stream: CpuStream) -> None:
        with self.lock:
            self.streams[stream.id] = stream
            event.clock = dict(stream.clock)

    def wait_clock(self, stream: CpuStream, clock: dict[int, int] | None) -> None:
        with self.lock:
            for sid, op in (clock or {}).items():
                if sid != stream.id:
                    stream.clock[sid] = max(stream.clock.get(sid, 0), op)

    def record_stream(self, tensor: torch.Tensor, stream: CpuStream) -> None:
        with self.lock:
            if (block := self.blocks.get(_key(tensor))) is not None:
                block.recorded.add(stream.id)

    def synchronize(self, stream: CpuStream) -> None:
        self.completed({stream.id: stream.clock[stream.id]})

    def completed(self, clock: dict[int, int] | None) -> None:
        """The host saw `clock`'s work finish (an event synchronized, or queried done): everything after, on
        any stream, is ordered after it."""
        with self.lock:
            for sid, op in (clock or {}).items():
                self.floor[sid] = max(self.floor.get(sid, 0), op)

    def track_host(self, t: torch.Tensor) -> None:
        """`t` is pinned host memory (streams.host_buffer): its allocation is no stream's write, and its free
        is never judged, because torch's caching host allocator records an event on every stream an async copy
        uses the block on and reuses the block only once those events completed. Uses of its bytes are checked
        from its first write on, like any memory."""
        with self.lock:
            if (key := _key(t)) is not None:
                self.blocks[key] = _Block(None, None, host=True)
                weakref.finalize(t.untyped_storage(), self._freed, key, self.blocks[key])

    def check(self) -> None:
        """Stop judging (the test's teardown frees everything at once) and raise what was found."""
        self.closed = True
        if self.violations:
            raise AssertionError("stream discipline violated:\n" + "\n".join(self.violations[:20]))


class _Mode(TorchDispatchMode):
    """Sees every op of the thread that entered it and reports it to the checker on the current stream."""

    def __init__(self, streams: CpuStreams):
        super().__init__()
        self.ops = streams

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view:         # metadata only (slice, view, detach): no kernel on a GPU, no memory touched
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        writes = []
        for i, arg in enumerate(func._schema.arguments):
            if arg.alias_info is not None and arg.alias_info.is_write:
                value = args[i] if i < len(args) else kwargs.get(arg.name)
                writes += [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
        seen = {_key(t) for t in inputs}
        fresh = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and _key(t) not in seen]
        self.ops.checker.op(self.ops.current(torch.device("cpu")), inputs, writes, fresh, str(func))
        return out


class CpuStreams:
    """workers/links/streams.py's operations for CPU tensors; with a checker, every op under `watching` is checked."""

    def __init__(self, checker: StreamChecker | None = None):
        self.checker = checker
        self.default_stream = CpuStream("default")
        self._local = threading.local()

    def applies(self, device: torch.device) -> bool:
        return device.type == "cpu"

    def current(self, device: torch.device) -> CpuStream:
        return getattr(self._local, "stream", None) or self.default_stream

    def new(self, device: torch.device) -> CpuStream:
        return CpuStream()

    @contextlib.contextmanager
    def using(self, stream: CpuStream) -> Iterator[CpuStream]:
        before = getattr(self._local, "stream", None)
        self._local.stream = stream
        try:
            with self.watching():
                yield stream
        finally:
            self._local.stream = before

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        """Check this thread's ops (once per thread; nothing without a checker)."""
        if self.checker is None or getattr(self._local, "watched", False):
            yield
            return
        self._local.watched = True
        try:
            with _Mode(self):
                yield
        finally:
            self._local.watched = False

    def event(self, interprocess: bool = False) -> CpuEvent:
        return CpuEvent()

    def record(self, event: CpuEvent, stream: CpuStream) -> None:
        if self.checker is not None:
            self.checker.record(event, stream)

    def wait_event(self, stream: CpuStream, event: CpuEvent) -> None:
        if self.checker is not None:
            self.checker.wait_clock(stream, event.clock)

    def wait_stream(self, stream: CpuStream, other: CpuStream) -> None:
        if self.checker is not None:
            self.checker.wait_clock(stream, dict(other.clock))

    def record_stream(self, tensor: torch.Tensor, stream: CpuStream) -> None:
        if self.checker is not None:
            self.checker.record_stream(tensor, stream)

    def synchronize(self, stream: CpuStream) -> None:
        if self.checker is not None:
            self.checker.synchronize(stream)

    def query(self, event: CpuEvent) -> bool:
        """Always done (CPU work is synchronous); a query that says so orders the host after the event."""
        if self.checker is not None:
            self.checker.completed(event.clock)
        return True

    def wait_host(self, event: CpuEvent) -> None:
        if self.checker is not None:
            self.checker.completed(event.clock)

    def copy_async(self, dst: torch.Tensor, src: torch.Tensor, stream: CpuStream) -> None:
        with self.using(stream):
            dst.copy_(src)

    def host_buffer(self, tensor: torch.Tensor) -> torch.Tensor:
        """Pinned host memory is no stream's: made unseen, then tracked as host memory (see `track_host`)."""
        with _unwatched():
            buffer = torch.empty_like(tensor)
        if self.checker is not None:
            self.checker.track_host(buffer)
        return buffer


@contextlib.contextmanager
def _unwatched() -> Iterator[None]:
    """Run the block with the checker's dispatch mode (if any) suspended."""
    with _disable_current_modes():
        yield

"""The replay log in front of device tensors: what a worker sent stays replayable without a host round trip
on the step's critical path.

A worker logs every downstream message right after sending it (workers/runtime/worker.py `_send`), and on cuda-ipc
and nccl links those messages now carry GPU tensors. Encoding them for the ReplayLog (workers/runtime/replay_log.py:
host bytes, in memory up to its bound, then spilled to files) needs their bytes on the host; a blocking copy
there would stall the worker's thread until the GPU had finished the stage's kernels, every step. So
`DeferredLog.append` only *queues* the copy: on a side stream of the tensor's device, ordered after the
current stream (`wait_stream`), into a pinned host buffer, with `record_stream` so the caching allocator keeps
the source block until the copy has read it, and an event recorded after it. The entry is encoded and handed
to the ReplayLog later, when its event has completed: each `append` first moves every finished entry (a
`query`, never a wait), and anything that reads the log (`since`, `prune`, `stats`, `close`) first waits for
the rest. Entries keep their order (the ReplayLog requires growing seqs), so a host-only message queued behind
a device one waits for it. GPU memory is not held beyond the copy; host memory of the queued entries is
bounded by what the side stream has not finished (a step or two).

Host tensors (every CPU run) are kept at once, by reference (`ReplayLog.keep`): the frames the send used when
the link hands them back (`frames`), else the codec's zero-copy frames of the same tensors. Stream operations
go through workers/links/streams.py, so tests run this with CPU doubles.
"""

from __future__ import annotations

from collections import deque

from auglocal.workers.links import streams
from auglocal.workers.runtime.replay_log import ReplayLog
from auglocal.workers.wire.messages import Codec, Message


class DeferredLog:
    """A ReplayLog whose device messages are copied to the host asynchronously (see the module docstring);
    every other attribute is the ReplayLog's."""

    def __init__(self, log: ReplayLog, codec: Codec):
        self.log, self.codec = log, codec
        self._pending: deque = deque()      # (seq, message with host tensors, event or None), in send order
        self._side: dict = {}               # device -> its copy stream

    def __getattr__(self, name: str):
        if name == "log":
            raise AttributeError(name)
        return getattr(self.log, name)

    def __len__(self) -> int:
        return len(self.log) + len(self._pending)

    def append(self, seq: int, message: Message, frames: list | None = None) -> None:
        """Keep `message` as entry `seq`; `frames`: what its send put on a host link (the same bytes), if known."""
        ops = streams.active()
        if not any(ops.applies(t.device) for t in message.tensors.values()):
            if not self._pending:
                self.log.keep(seq, frames if frames is not None else self.codec.encode(message))
                return
            self._pending.append((seq, message, ()))
        else:
            self._pending.append((seq, *self._copy_out(message, ops)))
        self._move(block=False)

    def _copy_out(self, message: Message, ops) -> tuple[Message, tuple]:
        """Queue the device tensors' copies to pinned host buffers; the host message and the copies' events."""
        host, sides = {}, {}
        for name, t in message.tensors.items():
            if not ops.applies(t.device):
                host[name] = t
                continue
            if t.device not in sides:
                side = self._side.get(t.device)
                if side is None:
                    side = self._side[t.device] = ops.new(t.device)
                ops.wait_stream(side, ops.current(t.device))   # after the kernels that computed the tensors
                sides[t.device] = side
            host[name] = ops.host_buffer(t)
            ops.copy_async(host[name], t, sides[t.device])
            ops.record_stream(t, sides[t.device])     # the source block lives until the copy has read it
        events = []
        for side in sides.values():
            events.append(ops.event())
            ops.record(events[-1], side)
        return (Message(message.kind, message.sender, message.epoch, message.step, message.layer, host,
                        message.meta), tuple(events))

    def _move(self, block: bool) -> None:
        """Hand finished entries (all of them if `block`) to the ReplayLog, in order."""
        ops = streams.active()
        while self._pending:
            seq, message, events = self._pending[0]
            if not block and not all(ops.query(e) for e in events):
                return
            for event in events:
                ops.wait_host(event)
            self.log.keep(seq, self.codec.encode(message))   # the pinned buffers are the log's own
            self._pending.popleft()

    def since(self, seq: int):
        self._move(block=True)
        return self.log.since(seq)

    def prune(self, seq: int) -> None:
        self._move(block=True)
        self.log.prune(seq)

    def stats(self) -> dict[str, int]:
        self._move(block=True)
        return self.log.stats()

    def close(self) -> None:
        self._pending.clear()
        self.log.close()


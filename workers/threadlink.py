"""A link between two thread workers of one host process: activations pass by reference, credits as on a socket.

Two workers in the same process need not serialise anything: the producer hands its output tensor object to
the consumer. What a ZeroMQ link guarantees still holds here:

- the same credit window (2 by default): a sender has at most `window` messages the receiver has not taken
  with `recv`; a full window blocks `send` up to its timeout, so a slow consumer slows its producer and no
  queue grows;
- the same interface and errors (`send`, `recv`, `wait_all`, `close`, `in_flight`, `send_raw`, `on_foreign`;
  every wait takes a timeout and raises TimeoutError);
- the same validation: the receiving worker checks meta and tensors against the protocol table
  (workers/protocol.py) exactly as for a decoded wire message. Only the encoding of tensors is skipped.
  Raw frames (`send_raw`: fault injection, a stranger) are decoded by the run's Codec at `recv`, so a
  corrupt or foreign message is refused the same way as on a socket.

Why the producer may not overwrite what it sent: the consumer keeps the tensor (its autograd graph saves it)
long after taking it. The worker sends a detached output that its stage never writes again (every stage
output is a fresh tensor), so no copy is needed. On a GPU each thread worker runs on its own CUDA stream: the
producer records an event on its stream after the output is computed and the consumer's stream waits on it
before any kernel reads the tensor; `record_stream` tells the caching allocator that the consumer's stream
uses the memory, so the producer dropping its reference never lets the allocator hand the block out while the
consumer may still read it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

import torch

from workers.messages import Codec, Message, MessageError


def _record_event(tensors: dict[str, torch.Tensor]):
    """A CUDA event on the current stream after the producer's kernels, or None for host tensors."""
    for t in tensors.values():
        if t.is_cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(t.device))
            return event
    return None


def _adopt(tensors: dict[str, torch.Tensor], event) -> None:
    """Make the consumer's current stream wait for the producer's kernels, and own the memory's lifetime."""
    if event is None:
        return
    for t in tensors.values():
        if t.is_cuda:
            stream = torch.cuda.current_stream(t.device)
            stream.wait_event(event)
            t.record_stream(stream)


class ThreadSender:
    """The producer's end: at most `window` messages the consumer has not taken yet."""

    by_reference = True     # the worker hands over its output tensor as it is (no copy to host memory)

    def __init__(self, link: ThreadLink):
        self._link = link
        self.window = link.window
        self.in_flight = 0

    def send(self, message: Message, timeout_ms: float) -> None:
        """Queue `message` (a shallow copy: its tensors by reference, detached from the producer's graph)."""
        if timeout_ms < 0:
            raise ValueError(f"timeout_ms must be >= 0, got {timeout_ms}")
        tensors = {name: t.detach() for name, t in message.tensors.items()}
        out = Message(message.kind, message.sender, message.epoch, message.step, message.layer, tensors,
                      message.meta)
        event = _record_event(tensors)
        deadline = time.monotonic() + timeout_ms / 1000
        with self._link.cond:
            while self.in_flight >= self.window:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"send to {self._link.name} timed out after {timeout_ms} ms: "
                                       f"{self.in_flight} of {self.window} messages still unconsumed")
                self._link.cond.wait(remaining)
            self.in_flight += 1
            self._link.queue.append((self, out, event))
            self._link.cond.notify_all()

    def send_raw(self, frames: list) -> None:
        """Put encoded frames on the link outside the window (fault injection, as on a socket)."""
        self._link.inject([bytes(f) for f in frames])

    def wait_all(self, timeout_ms: float) -> None:
        deadline = time.monotonic() + timeout_ms / 1000
        with self._link.cond:
            while self.in_flight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.in_flight} messages to {self._link.name} still unconsumed after "
                                       f"{timeout_ms} ms")
                self._link.cond.wait(remaining)

    def close(self) -> None:
        pass


class ThreadLink:
    """The consumer's inbox: messages from its one in-process producer (and raw frames), in arrival order."""

    def __init__(self, codec: Codec, name: str, window: int = 2):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.codec = codec
        self.name = name
        self.window = window
        self.cond = threading.Condition()
        self.queue: deque = deque()
        self.rejected = 0
        self.on_foreign: Callable[[MessageError], None] | None = None

    def sender(self) -> ThreadSender:
        return ThreadSender(self)

    def inject(self, frames: list[bytes]) -> None:
        with self.cond:
            self.queue.append((None, frames, None))
            self.cond.notify_all()

    def recv(self, timeout_ms: float) -> Message:
        """The next message; raw frames are decoded (a stranger's counted and dropped, a peer's bad one raises)."""
        if timeout_ms < 0:
            raise ValueError(f"timeout_ms must be >= 0, got {timeout_ms}")
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            with self.cond:
                while not self.queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"no message at {self.name} within {timeout_ms} ms (is the upstream "
                                           "thread alive?)")
                    self.cond.wait(remaining)
                sender, item, event = self.queue.popleft()
                if sender is not None:
                    sender.in_flight -= 1
                    self.cond.notify_all()
            if sender is not None:
                _adopt(item.tensors, event)
                return item
            try:
                return self.codec.decode(item, peer=f"<raw frames at {self.name}>")
            except MessageError as err:
                if not err.foreign:
                    raise
                self.rejected += 1
                if self.on_foreign is not None:
                    self.on_foreign(err)

    def close(self) -> None:
        pass

"""A link between two thread workers of one host process: activations pass by reference, credits as on a socket.

Two workers in the same process need not serialise anything: the producer hands its output tensor object to
the consumer. What a ZeroMQ link guarantees still holds, because this is the in-memory link
(workers/links/memlink.py) with one change, the payload:

- the same credit window (2 by default): a sender has at most `window` messages the receiver has not taken
  with `recv`; a full window blocks `send` up to its timeout, so a slow consumer slows its producer and no
  queue grows;
- the same interface and errors (`send`, `recv`, `wait_all`, `close`, `in_flight`, `send_raw`, `on_foreign`;
  every wait takes a timeout and raises TimeoutError);
- the same validation: the receiving worker checks meta and tensors against the protocol table
  (workers/wire/protocol.py) exactly as for a decoded wire message. Only the encoding of tensors is skipped.
  Raw frames (`send_raw`: fault injection, a stranger) are decoded by the run's Codec at `recv`, so a
  corrupt or foreign message is refused the same way as on a socket.

Why the producer may not overwrite what it sent: the consumer keeps the tensor (its autograd graph saves it)
long after taking it. The worker sends a detached output that its stage never writes again (every stage
output is a fresh tensor), so no copy is needed. On a GPU each thread worker runs on its own CUDA stream: the
producer records an event on its stream after the output is computed and the consumer's stream waits on it
before any kernel reads the tensor; `record_stream` tells the caching allocator that the consumer's stream
uses the memory, so the producer dropping its reference never lets the allocator hand the block out while the
consumer may still read it. Those stream operations go through workers/links/streams.py, so a CPU double can check
them in tests (tests/workers/stream_check.py).
"""

from __future__ import annotations

from auglocal.workers.links import streams
from auglocal.workers.links.memlink import MemoryLink, MemorySender
from auglocal.workers.wire.messages import Codec, Expect, Message


class ThreadSender(MemorySender):
    """The producer's end: at most `window` messages the consumer has not taken yet, passed by reference."""

    by_reference = True     # the worker hands over its output tensor as it is (no copy to host memory)

    def _payload(self, message: Message):
        """A shallow copy of `message`: its tensors by reference, detached from the producer's graph, and the
        CUDA event that marks them computed."""
        tensors = {name: t.detach() for name, t in message.tensors.items()}
        return (Message(message.kind, message.sender, message.epoch, message.step, message.layer, tensors,
                        message.meta), streams.handoff(tensors))


class ThreadLink(MemoryLink):
    """The consumer's inbox: messages from its one in-process producer (and raw frames), in arrival order."""

    def __init__(self, codec: Codec, name: str, window: int = 2):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        super().__init__(codec, name, window)

    def sender(self, codec: Codec | None = None) -> ThreadSender:
        return ThreadSender(self, codec or self.codec)

    def _open(self, sender: MemorySender | None, payload, expect: Expect | None) -> Message:
        if sender is None:                      # raw frames: decoded and validated as on a socket
            return super()._open(sender, payload, expect)
        message, event = payload
        streams.adopt(message.tensors, event)
        return message

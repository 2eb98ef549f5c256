"""In-memory links with the ZeroMQ links' interface and semantics, for driving a worker or coordinator in one process.

A `MemoryLink` is one receiving end (an inbox) that any number of `MemorySender`s feed. Messages go through the
run's `Codec` exactly as on a socket (encoded to frames, copied, decoded and validated on receipt), each sender
has its own credit window, strangers' messages are counted and dropped, and every wait takes a timeout and
raises TimeoutError. So unit tests exercise the real protocol, not a shortcut around it. `inject` puts raw
frames on the link the way a stranger on the socket would. Thread-safe: one condition guards each link.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from auglocal.workers.links.strangers import Strangers
from auglocal.workers.links.window import CreditWindow
from auglocal.workers.wire.messages import Codec, Expect, Message, MessageError


class MemorySender:
    """The sending end: at most `window` messages that the receiver has not consumed yet."""

    def __init__(self, link: MemoryLink, codec: Codec):
        self._link = link
        self._codec = codec
        self.window = link.window
        self._slots = CreditWindow(link.window)
        self.sent = 0

    @property
    def in_flight(self) -> int:
        return self._slots.in_flight

    def _payload(self, message: Message):
        """What travels on the link: the encoded frames, copied (a socket copies them too)."""
        return [bytes(f) for f in self._codec.encode(message)]

    def send(self, message: Message, timeout_ms: float) -> None:
        payload = self._payload(message)
        deadline = time.monotonic() + timeout_ms / 1000
        with self._link.cond:
            while self._slots.full:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"send to {self._link.name} timed out after {timeout_ms} ms: "
                                       f"{self.in_flight} of {self.window} messages unconsumed")
                self._link.cond.wait(remaining)
            self._slots.take()
            self.sent += 1
            self._link.queue.append((self, payload))
            self._link.cond.notify_all()

    def send_raw(self, frames: list) -> None:
        self._link.inject([bytes(f) for f in frames])

    def wait_all(self, timeout_ms: float) -> None:
        deadline = time.monotonic() + timeout_ms / 1000
        with self._link.cond:
            while self.in_flight > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.in_flight} messages to {self._link.name} still unconsumed")
                self._link.cond.wait(remaining)

    def close(self) -> None:
        pass


class MemoryLink(Strangers):
    """An inbox: a queue of encoded messages from its senders, consumed by `recv` in arrival order."""

    def __init__(self, codec: Codec, name: str = "inbox", window: int = 2):
        self.codec = codec
        self.name = name
        self.window = window
        self.cond = threading.Condition()
        self.queue: deque = deque()

    def sender(self, codec: Codec | None = None) -> MemorySender:
        return MemorySender(self, codec or self.codec)

    def inject(self, frames: list[bytes]) -> None:
        """Raw frames from nobody in particular (a stranger on the socket); they earn no credit."""
        with self.cond:
            self.queue.append((None, frames))
            self.cond.notify_all()

    def recv(self, timeout_ms: float, expect: Expect | None = None) -> Message:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            with self.cond:
                while not self.queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(f"no message at {self.name} within {timeout_ms} ms")
                    self.cond.wait(remaining)
                sender, payload = self.queue.popleft()
            try:
                message = self._open(sender, payload, expect)
            except MessageError as err:
                self._drop_if_stranger(err)
                continue
            if sender is not None:
                with self.cond:
                    sender._slots.credit()
                    self.cond.notify_all()
            return message

    def _open(self, sender: MemorySender | None, payload, expect: Expect | None) -> Message:
        """The message of one queued payload (frames are decoded and validated)."""
        return self.codec.decode(payload, expect, peer=f"<peer at {self.name}>")

    def pending(self) -> int:
        with self.cond:
            return len(self.queue)

    def close(self) -> None:
        pass

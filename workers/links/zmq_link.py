"""ZeroMQ links between worker processes: zero-copy tensor frames, credit-bounded in flight, with timeouts.

Design
------
A *link* is one directed edge, e.g. worker i -> worker i+1. The receiving process owns the address: its
`Receiver` binds a ROUTER socket there (ipc:// in a private directory by default, or tcp://127.0.0.1;
binding a non-loopback interface must be asked for explicitly). The sending process's `Sender` connects a
DEALER socket. Messages are encoded by `auglocal.workers.wire.messages.Codec` (msgpack header + raw tensor frames, no
pickle) and sent with ``copy=False``, so large tensors go from the tensor's memory to the socket without a
Python-side copy; received tensors are views on the received ZeroMQ frames.

Backpressure is a credit window, not just ZeroMQ's high-water marks. A Sender may have at most ``window``
messages that the receiving *application* has not yet taken with `Receiver.recv`; each recv returns one
credit to exactly the peer that sent the consumed message, once that message has passed full validation. A
sender at its window waits for a credit, up to its timeout. So the bytes buffered per sender are at most
``window`` messages however ZeroMQ and the kernel buffer internally, and a slow worker slows its upstream
instead of growing queues. The data direction's high-water marks are set to window + 1 as a second fence, so
they never bite before the credit check does. A message rejected by validation earns no credit: a stray
process gets nothing, and a misbehaving legitimate peer stalls visibly (TimeoutError).

A credit travels one of two ways:
- ipc:// links (same host by definition): one byte written to a named pipe that the Sender made next to the
  receiver's socket file and named by the token in its routing identity (workers/links/credit_pipe.py). Why: a
  credit message wakes the ZeroMQ I/O threads of both processes, which compete for the cores just while the
  receiving worker encodes its reply; a pipe write wakes nobody unless the sender is waiting at a full
  window. Nothing on such a sender's socket is a credit (what arrives there is never read; its high-water
  mark is 1). A sender that left needs no credit: a missing pipe, or one without a reader, is skipped.
- every other link (tcp, curve, and gloo/nccl/cuda-ipc headers on tcp), and any peer whose routing identity
  is not exactly the pipe form: a CREDIT message (a validated header-only message of the same run) on the
  same connection. The credit direction's high-water marks are generous (`_CREDIT_HWM`): a credit is a
  ~80-byte header, at most one per consumed message, and ZeroMQ learns of a pipe's reads lazily (every few
  messages, when the socket next processes commands), so a tight mark there could refuse a credit that has
  room, and a lost credit would shrink the window for good.

Every wait takes ``timeout_ms`` and is a poll (`zmq.Poller`, or select.poll on a credit pipe), never a
spin; on expiry it raises TimeoutError so the caller can check for shutdown or a dead peer and decide.
Credits cannot survive a peer restart: after one, close both ends and open a fresh link (a new Sender makes
a new token and pipe).

Many-to-one and one-to-many need no separate class. A Receiver accepts any number of Senders, each with its
own window and credits, fair-queued: workers -> coordinator metrics/acks/heartbeats is one coordinator
Receiver with one Sender per worker. Coordinator -> workers control is one Sender per worker, to that
worker's Receiver (which may be the same one its upstream activations arrive at: the worker then waits on a
single socket, and ``expect`` lists the kinds it accepts).

Limits: a Receiver sets ZMQ_MAXMSGSIZE to its link's frame bound (`max_frame`, workers/wire/frame_bounds.py; else
the codec's max_message_bytes), so ZeroMQ disconnects a peer that sends a larger frame before buffering it
(that sender sees a TimeoutError); a message whose frames together exceed the codec's limit is received and
rejected with MessageError. Binding an ipc:// path that exists replaces it (libzmq unlinks stale socket files),
so give each Receiver its own path in the run's private directory.

Contract: do not modify a sent tensor in place until the receiver has consumed it (`Sender.wait_all`, or the
next credit); ZeroMQ reads it asynchronously. Sockets are not thread-safe: use each end from one thread.

Transports: a `Link` (workers/links/link.py) names one of TRANSPORTS. ipc and tcp are the sockets above; curve is
tcp with CurveZMQ
(workers/links/curve.py: the Receiver is a CURVE server whose context's ZAP authenticator admits only allow-listed
client keys, the Sender a client that knows the server's key); gloo, nccl and cuda-ipc keep this header,
credit and window machinery and move only tensor bytes elsewhere (workers/links/paths/oob_link.py,
workers/links/paths/cuda_ipc.py).
"""

from __future__ import annotations

import time

import zmq
from auglocal.workers.links import curve as _curve
from auglocal.workers.links import zap as _zap
from auglocal.workers.links.credit_pipe import CreditPipe, socket_path
from auglocal.workers.links.strangers import Strangers
from auglocal.workers.links.window import CreditWindow
from auglocal.workers.links.zmq_base import (  # noqa: F401 - a link's addresses are imported from here
    _CREDIT_HWM,
    _CREDIT_ONLY,
    _EVENTS,
    _IPC_PATH_MAX,
    _NOBLOCK,
    _POLLIN,
    _SNDMORE,
    _check_timeout,
    _deadline,
    _Endpoint,
    _wait,
    ipc_address,
    tcp_address,
)
from auglocal.workers.links.zmq_receiver import Receiver  # noqa: F401 - both ends are imported from here
from auglocal.workers.wire.messages import MAX_HEADER_BYTES, Codec, Message, MessageError


class Sender(_Endpoint, Strangers):
    """The connecting end of a link: sends at most `window` messages ahead of what the receiver consumed."""

    def __init__(self, address: str, codec: Codec, *, window: int = 2, context: zmq.Context | None = None,
                 curve: _curve.CurveKeyPair | None = None, server_key: bytes | str | None = None,
                 handshake_secret: str | None = None):
        self._slots = CreditWindow(window)
        self.address = address
        self.window = window
        self._codec = codec
        self._valid_credit: bytes | None = None
        # `rejected` and `on_foreign` (Strangers) count refused credits: beyond the window, or foreign bytes in
        # the credit pipe (workers/links/credit_pipe.py); a worker reports them like a stranger's message.
        self._socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        if (curve is None) != (server_key is None):
            raise ValueError("a CURVE sender needs both its own key pair and the receiver's public key")
        if curve is not None:
            _curve.make_client(self._socket, curve, server_key)
        else:   # tests: `handshake_secret` makes a stranger that passes the handshake, so only the codec stops it
            _zap.join_plain(self._socket, codec.secret if handshake_secret is None else handshake_secret)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, window + 1)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_HEADER_BYTES)
        self._pipe: CreditPipe | None = None
        path = socket_path(address)
        if path is not None:
            try:
                # before connecting: the first credit may come at once
                self._pipe = CreditPipe(path, lambda: self._refuse("bytes in the credit pipe that are no "
                                                                   "credit of this link"))
            except ValueError:
                self._socket.close(linger=0)
                raise
            # Credits come through the pipe; nothing the receiver sends on the socket is read, so keep little.
            self._socket.setsockopt(zmq.ROUTING_ID, self._pipe.identity)
            self._socket.setsockopt(zmq.RCVHWM, 1)
        else:
            self._socket.setsockopt(zmq.RCVHWM, _CREDIT_HWM)   # only credits come back
        try:
            self._socket.connect(address)
        except zmq.ZMQError:
            self.close()
            raise
        self._credits = zmq.Poller()
        self._credits.register(self._socket, zmq.POLLIN)
        self._writable = zmq.Poller()
        self._writable.register(self._socket, zmq.POLLOUT)

    @property
    def credit_pipe_path(self) -> str | None:
        """The named pipe this sender's credits come through (ipc:// links), None where they are messages."""
        return None if self._pipe is None else self._pipe.path

    @property
    def in_flight(self) -> int:
        """Messages sent whose credit has not been collected yet (an upper bound on those unconsumed)."""
        return self._slots.in_flight

    def send(self, message: Message, timeout_ms: float) -> list:
        """Encode and send `message` without copying its tensors; waits for a credit if the window is full.
        Returns the frames sent (views on the tensors: a replay log keeps them instead of encoding again).

        Raises ValueError for a message that cannot be encoded (nothing is sent), TimeoutError when the window
        stays full for `timeout_ms` (the receiver is slow, stuck or dead), MessageError for a forged credit.
        """
        frames = self._codec.encode(message)
        self._reserve(timeout_ms)
        self._put(frames, timeout_ms)
        return frames

    def _reserve(self, timeout_ms: float) -> None:
        """Wait until the window has room for one more message (TimeoutError after `timeout_ms`)."""
        _check_timeout(timeout_ms)
        self._collect_credits(deadline=None)
        if self._slots.full:
            deadline = _deadline(timeout_ms)
            while self._slots.full:
                if not self._collect_credits(deadline):
                    raise TimeoutError(
                        f"send to {self.address} timed out after {timeout_ms} ms: {self.in_flight} of "
                        f"{self.window} messages still unconsumed by the receiver (slow or dead?)"
                    )

    def _put(self, frames: list, timeout_ms: float) -> None:
        """Queue one message's frames on the socket (window room already reserved) and count it in flight."""
        # Try at once; wait for writability only when ZeroMQ refuses (no peer connected yet, or its pipe full).
        deadline = None
        while not self._send_now(frames):
            deadline = _deadline(timeout_ms) if deadline is None else deadline
            if not _wait(self._writable, deadline):
                raise TimeoutError(f"send to {self.address} timed out after {timeout_ms} ms: socket not writable")
        self._slots.take()

    def _consumed(self) -> None:
        """A credit arrived: the receiver consumed our oldest message (out-of-band transports free its buffers)."""

    def send_raw(self, frames: list) -> None:
        """Put `frames` on the link as they are, outside encoding and the window: fault injection only."""
        self._socket.send_multipart(frames)

    def _send_now(self, frames: list) -> bool:
        """Queue one message without blocking; False if ZeroMQ would block (nothing was queued then).

        The header goes by copy (a small bytes object: cheaper than a zero-copy Frame); tensor frames go
        zero-copy (pyzmq still copies those below zmq.COPY_THRESHOLD, where a copy is the cheaper path).
        A multipart message is atomic: once its first frame is accepted, the rest cannot be refused.
        """
        socket = self._socket
        last = len(frames) - 1
        try:
            socket.send(frames[0], _NOBLOCK | (_SNDMORE if last else 0))
        except zmq.Again:
            return False
        for i in range(1, last + 1):
            socket.send(frames[i], _SNDMORE if i < last else 0, copy=False)
        return True

    def wait_all(self, timeout_ms: float) -> None:
        """Block until the receiver has consumed every message sent so far; TimeoutError otherwise."""
        deadline = _deadline(timeout_ms)
        self._collect_credits(deadline=None)
        while self.in_flight > 0:
            if not self._collect_credits(deadline):
                raise TimeoutError(
                    f"{self.in_flight} messages to {self.address} still unconsumed after {timeout_ms} ms"
                )

    def _collect_credits(self, deadline: float | None) -> bool:
        """Take every credit that has arrived, first waiting until `deadline` if given; True if any came."""
        if self._pipe is not None:
            return self._collect_pipe_credits(deadline)
        socket = self._socket
        got = False
        while True:
            # Readiness first, as in Receiver.recv: most calls find no credit, and a refused recv raises.
            if not socket.getsockopt(_EVENTS) & _POLLIN:
                if got or deadline is None or not _wait(self._credits, deadline):
                    return got
                continue   # something arrived: take it, and whatever came with it, before returning
            try:
                frame = socket.recv(_NOBLOCK, copy=False)
            except zmq.Again:
                continue
            frames = [frame.bytes]
            while frame.more:   # a credit is one frame; a malformed one is read whole and refused below
                frame = socket.recv(copy=False)
                frames.append(frame.bytes)
            # A receiver's credits are byte-identical: one equal to a credit that passed full validation
            # would pass it again, so only a new one is decoded (a forged or foreign one still fails).
            if len(frames) != 1 or frames[0] != self._valid_credit:
                self._codec.decode(frames, _CREDIT_ONLY, peer=f"<receiver at {self.address}>")
                self._valid_credit = frames[0] if len(frames) == 1 else None
            self._credited()
            got = True

    def _collect_pipe_credits(self, deadline: float | None) -> bool:
        """`_collect_credits` for a link whose credits come through its pipe (one byte each)."""
        pipe = self._pipe
        count = pipe.take()
        while not count and deadline is not None and _wait(pipe.poller, deadline):
            count = pipe.take()
            if not count and time.monotonic() >= deadline:   # a wake-up without a credit never loops past it
                break
        for _ in range(count):
            self._credited()
        return count > 0

    def _credited(self) -> None:
        """Count one credit: one fewer message in flight; one beyond the messages in flight is refused."""
        if self._slots.credit():
            self._consumed()
        else:
            self._refuse("a credit beyond the window (no message in flight)")

    def _refuse(self, detail: str) -> None:
        self._count_stranger(MessageError(f"<receiver at {self.address}>", "credit", detail, foreign=True))

    def close(self) -> None:
        """Close the socket (linger 0) and remove its credit pipe. Safe to call twice."""
        super().close()
        if self._pipe is not None:
            self._pipe.close()

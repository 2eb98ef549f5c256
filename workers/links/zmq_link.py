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

import math
import os
import tempfile
import time
from collections.abc import Callable

import zmq
from auglocal.workers.links import curve as _curve
from auglocal.workers.links import zap as _zap
from auglocal.workers.links.credit_pipe import CreditPipe, CreditPipes, socket_path
from auglocal.workers.links.handshake_audit import AUDIT_S, HandshakeAudit
from auglocal.workers.wire.messages import MAX_HEADER_BYTES, Codec, Expect, Kind, Message, MessageError

_IPC_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}
_CREDIT_ONLY: Expect = {Kind.CREDIT: {}}
# Plain ints: pyzmq's flag enums cost an enum construction per `|` on the per-message path.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_CREDIT_HWM = 1024   # credits queued per peer before ZeroMQ would refuse one (see the module docstring)


def ipc_address(name: str, directory: str | None = None) -> str:
    """An ipc:// address for a link named `name` in `directory` (a fresh private temp directory if None).

    The caller owns the directory. A private (0700) directory keeps other users from connecting.
    """
    if directory is None:
        directory = tempfile.mkdtemp(prefix="auglocal-")
    path = os.path.join(os.path.abspath(directory), f"{name}.sock")
    if len(path) > _IPC_PATH_MAX:
        raise ValueError(
            f"ipc socket path {path!r} is {len(path)} characters, above the {_IPC_PATH_MAX} that "
            "Unix sockets allow; use a shorter run directory or a tcp:// address"
        )
    return f"ipc://{path}"


def tcp_address(port: int | None = None) -> str:
    """A loopback tcp:// address; without a port the Receiver binds an ephemeral one (see its .address)."""
    return f"tcp://127.0.0.1:{'*' if port is None else port}"


def _check_bind_address(address: str, allow_remote: bool) -> None:
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in {"ipc", "tcp", "inproc"}:
        raise ValueError(f"address {address!r} must start with ipc://, tcp:// or inproc://")
    if scheme == "tcp" and not allow_remote:
        host = rest.rpartition(":")[0]
        if host not in _LOOPBACK_HOSTS:
            raise ValueError(
                f"refusing to bind {address!r}: not a loopback interface. Use tcp://127.0.0.1:PORT, "
                "or pass allow_remote=True when the run really spans machines"
            )


def _wait(poller, deadline: float) -> bool:
    """Wait until what `poller` holds (one socket, or one pipe) is ready, or `deadline` (time.monotonic) passes.

    `poller` is a zmq.Poller or a select.poll object: both take a timeout in milliseconds."""
    while True:
        remaining_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
        if poller.poll(remaining_ms):   # the poller holds one socket or pipe: any event is ours
            return True
        if remaining_ms == 0 or time.monotonic() >= deadline:  # re-wait only after an early wake-up
            return False


def _check_timeout(timeout_ms: float) -> None:
    if timeout_ms < 0:
        raise ValueError(f"timeout_ms must be >= 0, got {timeout_ms}")


def _deadline(timeout_ms: float) -> float:
    _check_timeout(timeout_ms)
    return time.monotonic() + timeout_ms / 1000


class _Endpoint:
    """Socket ownership shared by both ends: close with linger 0, context-manager support."""

    _socket: zmq.Socket

    def close(self) -> None:
        """Close the socket now, dropping anything unsent (linger 0). Safe to call twice."""
        if not self._socket.closed:
            self._socket.close(linger=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def socket(self) -> zmq.Socket:
        """The underlying socket, for registering in a caller's own zmq.Poller (do not send or recv on it)."""
        return self._socket


class Receiver(_Endpoint):
    """The bound end of one or more links: validates each message and returns one credit per consumed message.

    `name` is this process's name; it signs the credits. `window` must be at least the senders' window.
    `max_frame` is the largest frame a peer of this link may send (workers/wire/frame_bounds.py: from the link's
    kinds and tensor specs); None: the codec's max_message_bytes. A connection must pass the handshake first
    (PLAIN with the run's password, workers/links/zap.py, or CURVE): until then it can make this process hold at most
    one frame of that size.
    """

    def __init__(
        self,
        address: str,
        codec: Codec,
        name: str,
        *,
        window: int = 2,
        context: zmq.Context | None = None,
        allow_remote: bool = False,
        curve: _curve.CurveKeyPair | None = None,
        max_frame: int | None = None,
    ):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        _check_bind_address(address, allow_remote)
        if curve is not None and not address.startswith("tcp://"):
            raise ValueError(f"CURVE encrypts tcp:// links only, got {address!r}")
        self._codec = codec
        (self._credit,) = codec.encode(Message(Kind.CREDIT, name))   # header only: one frame
        context = context or zmq.Context.instance()
        self.allowed: _curve.KeyAllowList | None = None
        """With CURVE: the client public keys admitted (shared by the context's CURVE receivers)."""
        if curve is not None:
            self.allowed = _curve.authenticator(context)
        self._socket = context.socket(zmq.ROUTER)
        self._zap: tuple[_zap.Guard, str] | None = None
        if curve is not None:
            _curve.make_server(self._socket, curve)
        else:
            self._zap = _zap.serve_plain(self._socket, context, codec.secret)
        self._audit = HandshakeAudit(self._socket)
        self._audit_at = 0.0
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.RCVHWM, window + 1)
        self._socket.setsockopt(zmq.SNDHWM, _CREDIT_HWM)   # only credits go out
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # A frame above the limit makes ZeroMQ drop that peer before buffering it, in the handshake too: what
        # an unauthenticated connection can make us hold is one frame of this size.
        bound = codec.max_message_bytes if max_frame is None else max_frame
        self._socket.setsockopt(zmq.MAXMSGSIZE, max(bound, MAX_HEADER_BYTES))
        try:
            self._socket.bind(address)
        except zmq.ZMQError as exc:
            self.close()
            raise ValueError(f"cannot bind link address {address!r}: {exc} (in use by another process?)") from exc
        self.address: str = self._socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        """The bound address, with the actual port when an ephemeral tcp port was asked for."""
        path = socket_path(self.address)
        self._pipes: CreditPipes | None = None if path is None else CreditPipes(path)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self.rejected = 0
        """Strangers' messages dropped so far (from peers that passed the handshake: see `refused`)."""
        self.on_foreign: Callable[[MessageError], None] | None = None
        """Called with each stranger's rejection, message or refused connection (a worker reports it)."""

    @property
    def refused(self) -> int:
        """Connections refused in the handshake so far (counted as `recv` runs: workers/links/handshake_audit.py)."""
        return self._audit.refused

    def _check_handshakes(self, now: float) -> None:
        """Count and report the connections refused since the last look (at most every AUDIT_S)."""
        self._audit_at = now + AUDIT_S
        for reason in self._audit.poll():
            if self.on_foreign is not None:
                self.on_foreign(MessageError(f"<connection to {self.address}>", "handshake", reason, foreign=True))

    def recv(self, timeout_ms: float, expect: Expect | None = None) -> Message:
        """Next validated message from any connected sender; returns its sender a credit.

        A stranger's message (`MessageError.foreign`: no header, no or a wrong secret) is counted in
        `rejected`, passed to `on_foreign`, dropped without a credit, and the wait goes on. Raises
        TimeoutError when nothing of this run arrives within `timeout_ms`, MessageError when a peer of this
        run sent something malformed or not in `expect` (the receiver stays usable; no credit is returned).
        """
        socket = self._socket
        deadline = _deadline(timeout_ms)
        now = deadline - timeout_ms / 1000   # the deadline is now + timeout: no clock read of its own
        if now >= self._audit_at:
            self._check_handshakes(now)
        while True:
            # Ask before receiving: a refused non-blocking recv raises zmq.Again, and building that exception
            # costs more (~15 us) than the whole check (~2 us, and it also processes ZeroMQ's pending commands).
            if not socket.getsockopt(_EVENTS) & _POLLIN and not _wait(self._poller, deadline):
                raise TimeoutError(f"no message at {self.address} within {timeout_ms} ms (is the upstream alive?)")
            try:
                first = socket.recv(_NOBLOCK, copy=False)
            except zmq.Again:   # readiness was reported but nothing came: wait again, to the same deadline
                continue
            # The routing identity is copied (small bytes); header and tensor frames stay zero-copy Frames: the
            # header is size-checked before anything is parsed, tensors are rebuilt on the frames' buffers.
            # Frame.more says whether parts follow without a getsockopt(RCVMORE) call per part.
            identity = first.bytes
            frames = []
            frame = first
            while frame.more:
                frame = socket.recv(copy=False)
                frames.append(frame)
            try:
                message = self._decode(frames, expect, f"<peer {identity.hex()} at {self.address}>")
            except MessageError as err:
                if not err.foreign:
                    raise
                self.rejected += 1
                if self.on_foreign is not None:
                    self.on_foreign(err)
                continue
            if self._pipes is None or not self._pipes.give(identity):
                self._send_credit(identity)
            return message

    def _send_credit(self, identity: bytes) -> None:
        """Return a credit as a message on the socket (senders without a credit pipe: tcp, curve, others)."""
        socket = self._socket
        for attempt in range(2):
            try:
                socket.send(identity, _NOBLOCK | _SNDMORE)
                socket.send(self._credit, _NOBLOCK)
            except zmq.Again:
                if attempt:
                    raise
                socket.getsockopt(_EVENTS)   # process pending commands: the pipe's lazily reported reads
                continue
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EHOSTUNREACH:  # a peer that already left needs no credit
                    raise
            break

    def close(self) -> None:
        """Close the socket (linger 0) and the credit pipes of its senders. Safe to call twice."""
        self._audit.close()
        super().close()
        if getattr(self, "_pipes", None) is not None:
            self._pipes.close()
        if self._zap is not None:
            self._zap[0].release(self._zap[1])
            self._zap = None

    @property
    def open_credit_pipes(self) -> int:
        """How many senders' credit pipes this receiver holds open (a departed sender's is closed once noticed)."""
        return 0 if self._pipes is None else self._pipes.open_pipes

    def _decode(self, frames: list, expect: Expect | None, peer: str) -> Message:
        """Validate and rebuild one message from its ZeroMQ frames (out-of-band transports fetch tensors here)."""
        return self._codec.decode(frames, expect, peer=peer)


class Sender(_Endpoint):
    """The connecting end of a link: sends at most `window` messages ahead of what the receiver consumed."""

    def __init__(self, address: str, codec: Codec, *, window: int = 2, context: zmq.Context | None = None,
                 curve: _curve.CurveKeyPair | None = None, server_key: bytes | str | None = None,
                 handshake_secret: str | None = None):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.address = address
        self.window = window
        self._codec = codec
        self._in_flight = 0
        self._valid_credit: bytes | None = None
        self.rejected = 0
        """Credits refused: beyond the window, or foreign bytes in the credit pipe (workers/links/credit_pipe.py)."""
        self.on_foreign: Callable[[MessageError], None] | None = None
        """Called with each refused credit (a worker reports it to the coordinator, like a stranger's message)."""
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
        self._pipe_rejected = 0
        path = socket_path(address)
        if path is not None:
            try:
                self._pipe = CreditPipe(path)   # before connecting: the first credit may come at once
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
        return self._in_flight

    def send(self, message: Message, timeout_ms: float) -> None:
        """Encode and send `message` without copying its tensors; waits for a credit if the window is full.

        Raises ValueError for a message that cannot be encoded (nothing is sent), TimeoutError when the window
        stays full for `timeout_ms` (the receiver is slow, stuck or dead), MessageError for a forged credit.
        """
        frames = self._codec.encode(message)
        self._reserve(timeout_ms)
        self._put(frames, timeout_ms)

    def _reserve(self, timeout_ms: float) -> None:
        """Wait until the window has room for one more message (TimeoutError after `timeout_ms`)."""
        _check_timeout(timeout_ms)
        self._collect_credits(deadline=None)
        if self._in_flight >= self.window:
            deadline = _deadline(timeout_ms)
            while self._in_flight >= self.window:
                if not self._collect_credits(deadline):
                    raise TimeoutError(
                        f"send to {self.address} timed out after {timeout_ms} ms: {self._in_flight} of "
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
        self._in_flight += 1

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
        while self._in_flight > 0:
            if not self._collect_credits(deadline):
                raise TimeoutError(
                    f"{self._in_flight} messages to {self.address} still unconsumed after {timeout_ms} ms"
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
        while pipe.rejected > self._pipe_rejected:
            self._pipe_rejected += 1
            self._refuse("bytes in the credit pipe that are no credit of this link")
        for _ in range(count):
            self._credited()
        return count > 0

    def _credited(self) -> None:
        """Count one credit: one fewer message in flight; one beyond the messages in flight is refused."""
        if self._in_flight:
            self._in_flight -= 1
            self._consumed()
        else:
            self._refuse("a credit beyond the window (no message in flight)")

    def _refuse(self, detail: str) -> None:
        self.rejected += 1
        if self.on_foreign is not None:
            self.on_foreign(MessageError(f"<receiver at {self.address}>", "credit", detail, foreign=True))

    def close(self) -> None:
        """Close the socket (linger 0) and remove its credit pipe. Safe to call twice."""
        super().close()
        if self._pipe is not None:
            self._pipe.close()

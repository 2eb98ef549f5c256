"""The receiving end of a ZeroMQ link: a ROUTER that decodes and validates each message, counts and drops
strangers, and returns one credit per consumed message. See zmq_link.py for the link's design.
"""

from __future__ import annotations

import time

import zmq
from auglocal.workers.links import curve as _curve
from auglocal.workers.links import zap as _zap
from auglocal.workers.links.credit_pipe import CreditPipes, socket_path
from auglocal.workers.links.handshake_audit import AUDIT_S, HandshakeAudit
from auglocal.workers.links.strangers import Strangers
from auglocal.workers.links.zmq_base import (
    _CREDIT_HWM,
    _EVENTS,
    _NOBLOCK,
    _POLLIN,
    _SNDMORE,
    _check_bind_address,
    _deadline,
    _Endpoint,
    _wait,
)
from auglocal.workers.wire.messages import MAX_HEADER_BYTES, Codec, Expect, Kind, Message, MessageError


class Receiver(_Endpoint, Strangers):
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
        # `rejected` (Strangers) counts strangers' messages from peers that passed the handshake (those refused
        # in it: `refused`); `on_foreign` hears of both.

    @property
    def refused(self) -> int:
        """Connections refused in the handshake so far (counted as `recv` runs: workers/links/handshake_audit.py)."""
        return self._audit.refused

    def _check_handshakes(self, now: float) -> None:
        """Count and report the connections refused since the last look (at most every AUDIT_S)."""
        self._audit_at = now + AUDIT_S
        for reason in self._audit.poll():
            self._report_stranger(MessageError(f"<connection to {self.address}>", "handshake", reason, foreign=True))

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
                self._drop_if_stranger(err)
                continue
            if self._pipes is None or not self._pipes.give(identity):
                self._send_credit(identity)
            return message

    def ready(self) -> bool:
        """Whether something waits to be received, without waiting or raising: a cheap look before `recv(0)`,
        for a caller that polls an inbox that is empty almost always (a worker's control inbox, once per
        message; an empty `recv(0)` costs a TimeoutError). It also runs the periodic handshake audit."""
        now = time.monotonic()
        if now >= self._audit_at:
            self._check_handshakes(now)
        return bool(self._socket.getsockopt(_EVENTS) & _POLLIN)

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

"""ZeroMQ handshake authentication (ZAP) for every link: a peer proves it belongs to the run before it may send.

Why: ZeroMQ delivers a multipart message only once all of its frames have arrived, so a check of the header
(workers/wire/messages.py) runs after the receiving process has buffered the whole message; ZMQ_MAXMSGSIZE bounds
one frame, not the message. A stranger could make a worker hold gigabytes before being refused. With ZAP the
refusal happens in the handshake, before ZeroMQ accepts any message frame from that connection.

Two mechanisms, both checked by one ZAP handler per ZeroMQ context (`authenticator`; libzmq allows one):
- PLAIN on every ipc:// and tcp:// link (`serve_plain` on the Receiver, `join_plain` on the Sender): the
  password is an HMAC of the run's codec secret, so every process of the run can compute it and nobody else
  can. Compared in constant time. The password crosses the wire in clear, as the codec secret in every header
  already does: PLAIN tells this run's processes from strangers, it does not stop an eavesdropper (use curve).
- CURVE on curve links (workers/links/curve.py): the handler admits client keys on the context's `KeyAllowList`.

Each Receiver names its run in its ZAP domain, so two runs in one process (tests, a thread host) keep apart
passwords; a domain's password is dropped when the last socket of that run that registered it is closed.
"""

from __future__ import annotations

import hashlib
import hmac
import threading

import zmq
from zmq.auth.thread import ThreadAuthenticator

USERNAME = "auglocal"
_LABEL = b"auglocal zap plain v1"


def plain_password(secret: str) -> str:
    """The PLAIN password of the run whose codec secret is `secret` (hex, so it survives the ZAP decoding)."""
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256).hexdigest()


def domain_of(secret: str) -> str:
    """The ZAP domain a run's receivers name (a digest, so the secret itself never becomes a dict key)."""
    return "auglocal-" + hashlib.sha256(b"domain\0" + secret.encode()).hexdigest()[:16]


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread with a constant-time PLAIN check and a count of refusals."""

    def __init__(self, context: zmq.Context):
        super().__init__(context)
        self.refused = 0
        """PLAIN handshakes refused so far (a wrong or missing password)."""

    def _authenticate_plain(self, domain: str, username: str, password: str) -> tuple[bool, bytes]:
        expected = self.passwords.get(domain, {}).get(username)
        allowed = expected is not None and hmac.compare_digest(expected.encode(), password.encode())
        if not allowed:
            self.refused += 1
        return allowed, b"OK" if allowed else b"not a peer of this run"


class KeyAllowList:
    """The client public keys (z85) a CURVE Receiver admits; also the ZAP credentials provider (thread-safe)."""

    def __init__(self, keys=()):
        self._keys: set[bytes] = set()
        self._lock = threading.Lock()
        self.refused = 0
        """Handshakes refused so far (unknown keys)."""
        for key in keys:
            self.allow(key)

    def allow(self, public_key: bytes | str) -> None:
        """Admit clients holding this public key (one verified from a signed endpoint record)."""
        key = public_key.encode("ascii") if isinstance(public_key, str) else bytes(public_key)
        if len(key) != 40:
            raise ValueError(f"a z85 CURVE public key has 40 characters, got {len(key)}")
        with self._lock:
            self._keys.add(key)

    def __contains__(self, public_key: bytes) -> bool:
        with self._lock:
            return bytes(public_key) in self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook, called in the authenticator thread for each handshake."""
        admitted = key in self
        if not admitted:
            with self._lock:
                self.refused += 1
        return admitted


class Guard:
    """A context's ZAP handler: the PLAIN passwords of the runs whose receivers live in it, and CURVE's allow-list."""

    def __init__(self, context: zmq.Context):
        self.context = context
        self.auth = _Authenticator(context)
        self.auth.start()
        self.allowed = KeyAllowList()
        self.auth.configure_curve_callback(domain="*", credentials_provider=self.allowed)
        self._users: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self.auth.thread is not None and self.auth.context is self.context

    def admit(self, secret: str) -> str:
        """Accept PLAIN clients of the run with `secret`; returns the domain to set on the server socket."""
        domain = domain_of(secret)
        with self._lock:
            self._users[domain] = self._users.get(domain, 0) + 1
            self.auth.passwords[domain] = {USERNAME: plain_password(secret)}
        return domain

    def release(self, domain: str) -> None:
        """One socket of that run closed; the password goes with the last."""
        with self._lock:
            left = self._users.get(domain, 0) - 1
            if left > 0:
                self._users[domain] = left
            else:
                self._users.pop(domain, None)
                self.auth.passwords.pop(domain, None)

    def stop(self) -> None:
        self.auth.stop()


_guards: dict[int, Guard] = {}
_registry_lock = threading.Lock()


def authenticator(context: zmq.Context) -> Guard:
    """`context`'s ZAP handler, started on first use (one per context, shared by all its receivers)."""
    with _registry_lock:
        guard = _guards.get(id(context))
        if guard is None or not guard.running:
            guard = _guards[id(context)] = Guard(context)
        return guard


def stop_authenticator(context: zmq.Context) -> None:
    """Stop `context`'s ZAP handler (before terminating the context); a no-op if none runs."""
    with _registry_lock:
        guard = _guards.pop(id(context), None)
    if guard is not None:
        guard.stop()


def serve_plain(socket: zmq.Socket, context: zmq.Context, secret: str) -> tuple[Guard, str]:
    """Make `socket` (before bind) a PLAIN server that admits only clients of the run with `secret`.

    Returns the guard and domain to `release` when the socket closes."""
    guard = authenticator(context)
    domain = guard.admit(secret)
    socket.plain_server = True
    socket.zap_domain = domain.encode()
    return guard, domain


def join_plain(socket: zmq.Socket, secret: str) -> None:
    """Make `socket` (before connect) a PLAIN client presenting the run's password."""
    socket.plain_username = USERNAME.encode()
    socket.plain_password = plain_password(secret).encode()

"""CurveZMQ for links across hosts: ephemeral key pairs, an allow-list of client keys, one ZAP authenticator.

CURVE encrypts a tcp:// link and authenticates both ends: a Sender must know its Receiver's public key to
connect at all, and the Receiver's ZAP authenticator admits a client only if its public key is on the
allow-list, so a peer with an unknown key completes no handshake and never delivers a message (the run-secret
check in the Codec still follows for those that do). Keys are per process and never written to disk
(`CurveKeyPair.generate`, i.e. zmq.curve_keypair()); the public halves travel in signed endpoint records
(workers/wire/endpoint_record.py).

A ZAP handler belongs to a ZeroMQ context and there is at most one per context; workers/links/zap.py owns it (it
also checks the PLAIN passwords of ipc and tcp links). `authenticator(context)` starts it on first use and
returns the context's `KeyAllowList`; every CURVE Receiver of that context shares it.
"""

from __future__ import annotations

from dataclasses import dataclass

import zmq
from auglocal.workers.links.zap import KeyAllowList  # noqa: F401  (re-exported: CURVE callers name it here)


@dataclass(frozen=True)
class CurveKeyPair:
    """A z85-encoded CURVE key pair (40 ASCII characters each). Keep `secret` in this process."""

    public: bytes
    secret: bytes

    @classmethod
    def generate(cls) -> CurveKeyPair:
        """A fresh ephemeral pair (requires libzmq built with CURVE; raises RuntimeError otherwise)."""
        if not zmq.has("curve"):
            raise RuntimeError("this libzmq has no CURVE support; install pyzmq's bundled libzmq")
        public, secret = zmq.curve_keypair()
        return cls(public, secret)

    def __repr__(self) -> str:   # never print the secret half in logs or tracebacks
        return f"CurveKeyPair(public={self.public!r})"


def authenticator(context: zmq.Context) -> KeyAllowList:
    """The allow-list of `context`'s ZAP handler (workers/links/zap.py, shared with PLAIN), started on first use."""
    from auglocal.workers.links import zap

    return zap.authenticator(context).allowed


def stop_authenticator(context: zmq.Context) -> None:
    """Stop `context`'s ZAP handler (before terminating the context); a no-op if none runs."""
    from auglocal.workers.links import zap

    zap.stop_authenticator(context)


def make_server(socket: zmq.Socket, keys: CurveKeyPair) -> None:
    """Make a socket (before bind) a CURVE server with `keys`; its context's authenticator vets clients."""
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True


def make_client(socket: zmq.Socket, keys: CurveKeyPair, server_public: bytes | str) -> None:
    """Make a socket (before connect) a CURVE client of the server holding `server_public`."""
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_serverkey = server_public.encode("ascii") if isinstance(server_public, str) else server_public

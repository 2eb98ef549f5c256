"""What both ZeroMQ ends share: addresses (ipc:// paths that fit, tcp:// binds that stay on loopback unless
asked), deadlines and waits, and the socket holder with its context. See zmq_link.py for the link's design.
"""

from __future__ import annotations

import math
import os
import tempfile
import time

import zmq
from auglocal.workers.wire.messages import Expect, Kind

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

"""Credits of a same-host (ipc://) link through a named pipe: one byte per consumed message, no ZeroMQ message.

Why: a credit sent as a ZeroMQ message wakes the I/O threads of both peers' ZeroMQ contexts, and on a small
machine they compete for the cores exactly while the receiving worker encodes its reply; measured on a 2-core
host, dropping the credit messages cut 35-45 us per one-way hop. A pipe write is one system call that wakes
only the sending application thread, when it waits.

How: the Sender (`CreditPipe`) makes a FIFO next to the receiver's socket file, named
`<socket path>.<token>.credits` with a fresh 16-hex-digit token, opens it before connecting and gives its
ZeroMQ socket the routing identity ``fifo:<token>``. The Receiver (`CreditPipes`) learns the token from the
identity of a message that passed full validation, rebuilds the path from *its own* socket path (never from
anything the peer sends but the validated token) and writes one byte per consumed message. So a credit still
exists only for a message of this run with the right secret, as before; the FIFO (mode 0600, in the run's
0700 folder) can be written only by this user. Both ends must see the receiver's socket under the same path
(the address the receiver reports is the one to connect to).

A credit is not one byte but an 8-byte record: the BLAKE2b of the consumed message's number on this link
(1, 2, ...), keyed with the token. The sender knows the one record that can come next, so bytes someone else
wrote into the FIFO (the same user only: mode 0600) never count as a credit: they are skipped, reported to
the sender's hook (once per run of foreign bytes; the Sender counts them as strangers), and the window, and
with it `in_flight`, stays what the receiver really consumed. A record is written with one write() below
PIPE_BUF, so foreign bytes land between records, never inside one. It checks integrity, not secrecy: the
token is in the FIFO's name, and a process of this user could as well change the worker itself.

A peer that left is like today's unreachable peer: its FIFO is gone (ENOENT), has no reader (ENXIO) or breaks
on write (EPIPE), and it needs no credit. The sender keeps a write end of its own FIFO open so that the read end
never reports end-of-file or hang-up (a poll would otherwise return at once, forever, after the receiver
closes). Credits in the pipe never exceed the sender's window, far below the pipe's 64 KiB.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import select
import stat
from collections.abc import Callable

IDENTITY_PREFIX = b"fifo:"
TOKEN_HEX_DIGITS = 16
_HEX = frozenset(b"0123456789abcdef")
RECORD_BYTES = 8
_READ_BYTES = 4096   # far above any window: one read almost always takes every credit there is


def credit_record(token: str, n: int) -> bytes:
    """The record of the `n`-th credit (1-based) of the sender with `token`."""
    return hashlib.blake2b(n.to_bytes(8, "little"), digest_size=RECORD_BYTES, key=token.encode("ascii")).digest()


def socket_path(address: str) -> str | None:
    """The filesystem path of an ipc:// address, or None where credits cannot use a pipe (tcp, inproc, an
    abstract ipc://@name socket)."""
    if not address.startswith("ipc://"):
        return None
    path = address[len("ipc://"):]
    return path if path and not path.startswith("@") else None


def pipe_path(socket: str, token: str) -> str:
    """Where the FIFO of the sender with `token` lives, next to the receiver's socket file `socket`."""
    return f"{socket}.{token}.credits"


def token_of(identity: bytes) -> str | None:
    """The token of a FIFO-credited sender's routing identity, or None if `identity` is not exactly that form.

    The identity comes from the peer, so it is checked strictly: the exact prefix, exactly 16 lowercase hex
    digits and nothing else (no path separators, no dots can slip into the pipe path)."""
    if len(identity) != len(IDENTITY_PREFIX) + TOKEN_HEX_DIGITS or not identity.startswith(IDENTITY_PREFIX):
        return None
    token = identity[len(IDENTITY_PREFIX):]
    return token.decode("ascii") if _HEX.issuperset(token) else None


class CreditPipe:
    """The sending end's FIFO: made and opened before the socket connects, counted by non-blocking reads."""

    def __init__(self, socket: str, on_foreign: Callable[[], None]):
        self._on_foreign = on_foreign
        self.token = secrets.token_hex(TOKEN_HEX_DIGITS // 2)
        self.identity = IDENTITY_PREFIX + self.token.encode("ascii")
        """The routing identity to set on the sender's socket before it connects."""
        self.path = pipe_path(socket, self.token)
        try:
            os.mkfifo(self.path, 0o600)
        except OSError as exc:
            raise ValueError(f"cannot make the credit pipe {self.path!r} for the ipc link to {socket!r}: {exc} "
                             "(the receiver's socket folder must exist and be writable)") from exc
        try:
            self._read = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            # Our own writer keeps the read end from ever reporting EOF/POLLHUP (see the module docstring).
            self._keep = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self.close()
            raise
        self.poller = select.poll()
        """Ready when credits wait to be read (a `poll(timeout_ms)` object, as `transport._wait` takes)."""
        self.poller.register(self._read, select.POLLIN)
        self._credits = 0                      # valid records taken so far
        self._expected = credit_record(self.token, 1)
        self._carry = b""                      # fewer than RECORD_BYTES bytes not yet resolved
        self._in_foreign = False               # the carry continues a run of foreign bytes already reported

    def _read_all(self) -> bytes:
        if not self.poller.poll(0):    # nothing there (most calls): a poll costs a third of a read that raises
            return b""
        try:
            chunk = os.read(self._read, _READ_BYTES)
        except BlockingIOError:
            return b""
        if len(chunk) < _READ_BYTES:   # one read almost always takes everything there is
            return chunk
        chunks = [chunk]
        while True:
            try:
                chunk = os.read(self._read, _READ_BYTES)
            except BlockingIOError:
                break
            chunks.append(chunk)
            if len(chunk) < _READ_BYTES:
                break
        return b"".join(chunks)

    def take(self) -> int:
        """How many valid credits arrived since the last call (0 when none; never blocks). Foreign bytes are
        skipped and reported to `on_foreign`, once per run."""
        data = self._read_all()
        if not self._carry and data == self._expected:   # the common case: exactly the one credit expected
            self._in_foreign = False
            self._credits += 1
            self._expected = credit_record(self.token, self._credits + 1)
            return 1
        data = self._carry + data
        count = 0
        while True:
            i = data.find(self._expected)
            if i < 0:
                keep = RECORD_BYTES - 1     # could be the start of a record cut by the read size
                if len(data) > keep:
                    self._foreign()
                    data = data[len(data) - keep:]
                self._carry = data
                return count
            if i > 0:
                self._foreign()
            self._in_foreign = False
            data = data[i + RECORD_BYTES:]
            self._credits += 1
            count += 1
            self._expected = credit_record(self.token, self._credits + 1)

    def _foreign(self) -> None:
        if not self._in_foreign:
            self._in_foreign = True
            self._on_foreign()

    def close(self) -> None:
        """Remove the FIFO and close both ends; the receiver then sees a peer that left. Safe to call twice."""
        for name in ("_read", "_keep"):
            fd = getattr(self, name, None)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class CreditPipes:
    """The receiving end's writers: one cached FIFO per FIFO-credited sender of the socket at `socket`."""

    def __init__(self, socket: str):
        self._socket = socket
        self._fds: dict[bytes, int] = {}
        self._given: dict[bytes, int] = {}     # credits written per sender (kept after its pipe is dropped)
        self._tokens: dict[bytes, str] = {}    # each open pipe's sender token (checked once, when opened)

    def give(self, identity: bytes) -> bool:
        """Return one credit to the sender with routing `identity` through its pipe.

        True when the pipe handled it (written, or the sender has left and needs none); False when `identity`
        is not a FIFO identity, so the caller sends a credit message instead."""
        fd = self._fds.get(identity)
        if fd is None:
            token = token_of(identity)
            if token is None:
                return False
            fd = self._open(identity, token)
            if fd is None:
                return True
            self._tokens[identity] = token
        n = self._given.get(identity, 0) + 1
        try:
            os.write(fd, credit_record(self._tokens[identity], n))   # one atomic write (below PIPE_BUF)
            self._given[identity] = n
        except BrokenPipeError:     # its reader closed: the sender left
            self._drop(identity)
        except BlockingIOError:
            raise RuntimeError(f"the credit pipe of sender {identity.decode()} at {self._socket} is full: 64 KiB "
                               "of credits unread, far beyond any window (is that sender reading its pipe?)") from None
        return True

    @property
    def open_pipes(self) -> int:
        """How many senders' pipes are held open (they are closed when their sender is found gone)."""
        return len(self._fds)

    def _open(self, identity: bytes, token: str) -> int | None:
        self._forget_departed()
        path = pipe_path(self._socket, token)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENXIO):   # removed, or nobody reads it: the sender left
                return None
            raise
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            raise RuntimeError(f"{path} is not a named pipe: something other than a sender put it in the run's "
                               "socket folder")
        self._fds[identity] = fd
        return fd

    def _forget_departed(self) -> None:
        """Close the pipes whose reader is gone (poll reports POLLERR on such a write end), so senders that
        left between their last message and a relink do not hold descriptors for the rest of the run."""
        if not self._fds:
            return
        poller = select.poll()
        by_fd = {fd: identity for identity, fd in self._fds.items()}
        for fd in by_fd:
            poller.register(fd, select.POLLOUT)
        for fd, events in poller.poll(0):
            if events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                self._drop(by_fd[fd])

    def _drop(self, identity: bytes) -> None:
        os.close(self._fds.pop(identity))

    def close(self) -> None:
        """Close every cached pipe."""
        while self._fds:
            self._drop(next(iter(self._fds)))

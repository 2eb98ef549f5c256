"""Counting the connections a bound socket refused in the ZeroMQ handshake (workers/links/zap.py): strangers are told
apart and counted, as their messages were before handshake authentication dropped them unseen.

libzmq reports a socket's connection events on a monitor socket (zmq_socket_monitor): ACCEPTED and
DISCONNECTED carry the connection's file descriptor, HANDSHAKE_SUCCEEDED carries none. So a connection that
disconnects while still *pending* (accepted, handshake not known to have succeeded) is a refused one: a wrong
password or key, another mechanism (a plain ZeroMQ socket), bytes that are no ZMTP at all, or an idle
connection that ZeroMQ dropped after its handshake interval. A success is matched to the newest pending
connection: a stranger's idle connection opened earlier stays pending. When a stranger connects during the
microseconds of a legitimate handshake the match can be the wrong one; the count is then late, never wrong:
once every connection has closed it equals accepted minus succeeded.

`poll` reads what has arrived without waiting; the Receiver calls it every AUDIT_S at most, from the thread
that uses the socket (ZeroMQ sockets are not thread-safe), so the per-message path pays nothing.
"""

from __future__ import annotations

import zmq
from zmq.utils.monitor import parse_monitor_message

AUDIT_S = 0.2
_FAILED = {
    int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL): "closed before its handshake completed",
    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): "spoke another ZeroMQ mechanism or protocol",
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): "did not prove the run's secret",
}
_ACCEPTED = int(zmq.EVENT_ACCEPTED)
_SUCCEEDED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
_DISCONNECTED = int(zmq.EVENT_DISCONNECTED)
_EVENTS = _ACCEPTED | _SUCCEEDED | _DISCONNECTED
for _event in _FAILED:
    _EVENTS |= _event
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)


class HandshakeAudit:
    """The refused connections of one bound socket (open before bind, close before the socket)."""

    def __init__(self, socket: zmq.Socket):
        self._socket = socket
        self._monitor = socket.get_monitor_socket(_EVENTS)
        self._pending: list[int] = []
        self._reason = _FAILED[int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)]
        self.refused = 0
        """Connections refused so far."""

    def poll(self) -> list[str]:
        """Why each connection refused since the last call was refused (empty: none). Never waits."""
        monitor = self._monitor
        found: list[str] = []
        while monitor.getsockopt(zmq.EVENTS) & _POLLIN:
            try:
                event = parse_monitor_message(monitor.recv_multipart(_NOBLOCK))
            except zmq.Again:
                break
            kind, value = int(event["event"]), int(event["value"])
            if kind == _ACCEPTED:
                self._pending.append(value)
            elif kind == _SUCCEEDED:
                if self._pending:
                    self._pending.pop()
            elif kind in _FAILED:
                self._reason = _FAILED[kind]
            elif kind == _DISCONNECTED and value in self._pending:
                self._pending.remove(value)
                self.refused += 1
                found.append(self._reason)
                self._reason = _FAILED[int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)]
        return found

    def close(self) -> None:
        """Stop monitoring (before the socket closes). Safe to call twice."""
        if not self._monitor.closed:
            try:
                self._socket.disable_monitor()
            except zmq.ZMQError:
                pass
            self._monitor.close(linger=0)

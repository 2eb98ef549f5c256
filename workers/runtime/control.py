"""The control messages of one-worker recovery (launch/run/recovery.py), as the worker answers them: relink to a
restarted neighbour and replay to it, drop what a restarted upstream resends, prune the log at a commit, and the
release after the stop.

A mixin of `Worker` (worker.py): the loop calls `_poll_control` between messages; these handlers use the loop's
links, log and failure path.
"""

from __future__ import annotations

from auglocal.workers.runtime.replay_log import LogLost
from auglocal.workers.wire import protocol
from auglocal.workers.wire.messages import Message, MessageError
from auglocal.workers.wire.protocol import Route


class RecoveryControl:
    """Worker's handlers for route-DOWN control kinds (relink, expect_replay, committed, release)."""

    def _poll_control(self) -> None:
        """Handle every control message waiting, unless already inside one (a relink's replay)."""
        if self.links.control is None or self._in_control:
            return
        control = self.links.control
        ready = getattr(control, "ready", None)     # ZeroMQ inboxes: a look that does not raise when empty
        if ready is not None and not ready():
            return
        self._in_control = True
        try:
            while True:
                try:
                    raw = control.recv(0)
                except TimeoutError:
                    return
                try:
                    msg = protocol.validate(raw, Route.DOWN)
                except MessageError as err:
                    self._fail(f"{self.spec.name} rejected a control message: {err}")
                protocol.dispatch(self.handlers, msg)
        finally:
            self._in_control = False

    def _relink(self, msg: Message) -> None:
        """The next worker restarted at `address`: drop the old link (its credits die with it), open a fresh one
        and resend everything logged after the restarted worker's checkpoint, in order."""
        if self.links.outbox is None or self.links.reopen_outbox is None:
            self._fail(f"{self.spec.name}: told to relink, but it has no outgoing link to reopen")
        self.links.outbox.close()
        self.links.outbox = self.links.reopen_outbox(msg.meta.address)
        self.links.outbox.on_foreign = self._report_rejected
        try:
            for frames in self.log.since(msg.meta.from_seq):
                self._send(self.links.outbox, self.codec.decode(frames), log=False)
        except LogLost as err:
            self._fail(f"{self.spec.name}: cannot replay to the restarted worker: {err}")

    def _expect_replay(self, msg: Message) -> None:
        self.replay_from = msg.meta.upstream

    def _committed(self, msg: Message) -> None:
        if self.log is not None:
            self.log.prune(msg.meta.seq)

    def _release(self, msg: Message) -> None:
        """Every worker reported stopped: nobody can need this worker's replay, or it to drop a replay, again."""
        if not self.stopped:
            self._fail(f"{self.spec.name}: released before the stop marker reached it")
        self.released = True


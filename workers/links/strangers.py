"""What every link end does with something from outside the run: count it, report it, never act on it.

A stranger's message (no header, a wrong secret or run id: `MessageError.foreign`) or a forged credit earns
nothing and stops nothing; it is counted in `rejected` and passed to `on_foreign`, which a worker forwards to
the coordinator (a `rejected` report) so the run's summary counts it. One place, so each receiver and sender
counts the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from auglocal.workers.wire.messages import MessageError


class Strangers:
    """Mixin of a link end: `rejected` and `on_foreign` as its callers see them, and the counting."""

    rejected: int = 0
    """Strangers' messages (or forged credits) dropped so far."""
    on_foreign: Callable[[MessageError], None] | None = None
    """Called with each stranger's rejection (a worker reports it to the coordinator)."""

    def _report_stranger(self, err: MessageError) -> None:
        """Pass `err` on without counting it in `rejected` (a refused handshake has its own count)."""
        if self.on_foreign is not None:
            self.on_foreign(err)

    def _count_stranger(self, err: MessageError) -> None:
        self.rejected += 1
        self._report_stranger(err)

    def _drop_if_stranger(self, err: MessageError) -> None:
        """Count a stranger's rejection; re-raise a peer's (a failure of that peer, not to be dropped)."""
        if not err.foreign:
            raise err
        self._count_stranger(err)

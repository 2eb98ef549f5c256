"""The credit window every sending end keeps: at most `window` messages the receiver has not consumed yet.

One accounting for every link (ZeroMQ `Sender`, in-memory `MemorySender`, the thread link), so a window means
the same on each: a message takes a slot when it is sent, a credit frees the oldest, and a credit with no
message in flight is not a credit at all (the caller refuses it as a stranger's). How each end waits for room
is its own (a poll on its socket or pipe, a condition); what it waits for is `full`.
"""

from __future__ import annotations


class CreditWindow:
    """Slots of one sender: `in_flight` of `window` taken, one freed per credit."""

    def __init__(self, window: int):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.window = window
        self.in_flight = 0

    @property
    def full(self) -> bool:
        return self.in_flight >= self.window

    def take(self) -> None:
        """Count one message sent (the caller made sure the window had room)."""
        self.in_flight += 1

    def credit(self) -> bool:
        """Free the oldest slot; False for a credit beyond the window (nothing in flight: not ours to take)."""
        if not self.in_flight:
            return False
        self.in_flight -= 1
        return True

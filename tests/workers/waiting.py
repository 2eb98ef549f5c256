"""Negative waits of the link tests: nothing may arrive, but the wait ends once the stranger has been refused."""

from __future__ import annotations

import time

import pytest


def nothing_arrives_until_rejected(inbox, count: int, within_ms: int) -> None:
    """Receive in short slices, each of which must time out, until `inbox` has rejected `count` messages or
    `within_ms` passed. As strict as one recv(within_ms) that must time out, since a stranger's message can
    arrive no later than its rejection, without sitting out the rest of the window once it has been refused."""
    deadline = time.monotonic() + within_ms / 1000
    while inbox.rejected < count and time.monotonic() < deadline:
        with pytest.raises(TimeoutError):
            inbox.recv(20)

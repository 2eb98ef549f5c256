"""Fixtures of the fault-injection suite: the sequential reference, computed once per session."""

import pytest

from tests.faults.support import Reference, sequential_reference


@pytest.fixture(scope="session")
def reference() -> Reference:
    """The small run trained by the sequential trainer: every faulted run must end with its weights."""
    return sequential_reference()

"""Fixtures of the whole suite."""

import pytest


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own XDG cache folder: no test reads or writes the user's ~/.cache/auglocal
    (measured module times), and no test depends on what an earlier one cached. Subprocesses inherit it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))

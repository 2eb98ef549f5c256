"""One JSON file in the user's cache folder: what earlier runs on this machine worked out, kept for later runs.

Shared by the measured module times (timing_cache.py) and the counted MACs (mac_cache.py). A cache only ever
saves work: a file that is missing, unreadable, of another format or another program's reads as empty and is
rewritten on the next write, and a write that fails (read-only home, full disk) is not an error of the run.
The entries carry their SHA-256, so a damaged file (a flipped digit is still valid JSON, and would be a wrong
MAC count or module time) reads as empty too, never as a wrong figure.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from engine.atomic import atomic_write_bytes


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/auglocal, by default ~/.cache/auglocal."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "auglocal"


def _digest(entries: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


class CacheFile:
    """`{"format": N, "entries": {...}}` at `path` (default: `file_name` in cache_dir()); N is bumped when the
    meaning of an entry changes, so older files are ignored instead of misread."""

    def __init__(self, file_name: str, format: int, path: str | Path | None = None):
        self.path = Path(path) if path is not None else cache_dir() / file_name
        self.format = format

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("format") != self.format or not isinstance(data.get("entries"), dict):
            return {}
        if data.get("sha256") != _digest(data["entries"]):
            return {}
        return data["entries"]

    def write(self, entries: dict[str, Any]) -> None:
        """Replace the file atomically (a concurrent reader sees the old or the new file, never half of one)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            content = {"format": self.format, "sha256": _digest(entries), "entries": entries}
            atomic_write_bytes(self.path, json.dumps(content, indent=1).encode())
        except OSError:
            pass

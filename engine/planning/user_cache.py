"""One JSON file in the user's cache folder: what earlier runs on this machine worked out, kept for later runs.

Shared by the measured module times (timing_cache.py) and the counted MACs (mac_cache.py). A cache only ever
saves work: a file that is missing, or of another format (an older auglocal), reads as empty and is rewritten
on the next write, and a write that fails (read-only home, full disk) is not an error of the run.

The folder is the user's, but what is in it is untrusted input: another program, a bad disk or a hostile hand
may have written it. The entries carry their SHA-256, so a damaged file (a flipped digit is still valid JSON,
and would be a wrong MAC count or module time) reads as empty; and since a digest proves only that the file
is whole, not that its figures are sane, each cache checks its entries' types and ranges as well (finite,
positive, plausible). Anything that fails is a cache miss with one warning line naming the file (once per
file and process), never a traceback and never a figure the plan would trust: too large a file, JSON too deep
for the parser, `NaN`/`Infinity`, a wrong digest or schema.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from auglocal.engine.atomic import atomic_write_bytes

#: a cache file larger than this is not read (ResNet-110's MAC cache is about 30 KB)
MAX_BYTES = 16 << 20

_warned: set[str] = set()


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/auglocal, by default ~/.cache/auglocal."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "auglocal"


def _digest(entries: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a cache may hold")


def warn_ignored(path: Path, why: str) -> None:
    """One line on stderr, once per file and process: the cache is ignored (a miss) and why."""
    if str(path) in _warned:
        return
    _warned.add(str(path))
    print(f"auglocal: warning: ignoring the cache file {path} ({why}); it is rewritten when next saved",
          file=sys.stderr)


class CacheFile:
    """`{"format": N, "sha256": ..., "entries": {...}}` at `path` (default: `file_name` in cache_dir()); N is
    bumped when the meaning of an entry changes, so older files are ignored instead of misread."""

    def __init__(self, file_name: str, format: int, path: str | Path | None = None):
        self.path = Path(path) if path is not None else cache_dir() / file_name
        self.format = format

    def warn(self, why: str) -> None:
        """Report an entry the cache refused (see warn_ignored)."""
        warn_ignored(self.path, why)

    def read(self) -> dict[str, Any]:
        """The entries, or {} when the file is missing, of another format, or anything but whole and sane."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as err:
            self.warn(f"unreadable: {err.strerror or err}")
            return {}
        if len(raw) > MAX_BYTES:
            self.warn(f"larger than {MAX_BYTES >> 20} MiB")
            return {}
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except RecursionError:
            self.warn("JSON nested too deep")
            return {}
        except ValueError:                     # also UnicodeDecodeError and NaN/Infinity
            self.warn("not valid JSON of finite numbers")
            return {}
        if isinstance(data, dict) and "format" in data and data.get("format") != self.format:
            return {}                          # another auglocal's format: quietly rewritten
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            self.warn("not a cache of this program")
            return {}
        if data.get("sha256") != _digest(data["entries"]):
            self.warn("its SHA-256 does not match its entries: damaged")
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
        else:
            _warned.discard(str(self.path))

"""Forward MACs counted by earlier runs on this machine, so that a dry run after the first need not count again.

Counting runs every distinct block once on the meta device under torch's FlopCounterMode, which imports
torch._dynamo and torch's Python meta kernels: about 2.5 s of a ResNet-110 dry run that otherwise takes 7 s.
A count depends only on the code that builds and runs the module and on the torch version, so entries are
filed under a digest of both: editing any file of the engine package, or installing another torch or
torchvision, starts a fresh set (the old one is dropped at the next write), and a stale count can never be
read. Keys and values are those of `costs._counted_call`'s in-process memo.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

import torch

from engine.planning.user_cache import CacheFile

FORMAT = 1
FILE_NAME = "module_macs.json"

#: MACs per image and output shape (None: the module returned no tensor)
Count = tuple[int, tuple[int, ...] | None]


@functools.cache
def code_version() -> str:
    """Digest of the engine package's source and the torch and torchvision versions (read without importing)."""
    digest = hashlib.sha256(torch.__version__.encode())
    try:
        digest.update(metadata.version("torchvision").encode())
    except metadata.PackageNotFoundError:
        digest.update(b"no torchvision")
    package = Path(__file__).resolve().parents[1]
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class MacCache:
    """The counts of the current code version, read once and written back when new counts were added."""

    def __init__(self, path: str | Path | None = None):
        self._file = CacheFile(FILE_NAME, FORMAT, path)
        self.path = self._file.path

    def load(self) -> dict[str, Count]:
        """Every well-formed count of this code version (others, and malformed entries, are ignored)."""
        entries = self._file.read().get(code_version())
        counts: dict[str, Count] = {}
        if not isinstance(entries, dict):
            return counts
        for key, value in entries.items():
            try:
                macs, shape = value
                if type(macs) is not int or macs < 0:
                    continue
                counts[key] = (macs, None if shape is None else tuple(int(d) for d in shape))
            except (TypeError, ValueError):
                continue
        return counts

    def add(self, counts: dict[str, Count]) -> None:
        """Merge `counts` into the file (with what another process may have written since it was read)."""
        if not counts:
            return
        current = self._file.read().get(code_version())
        merged = dict(current) if isinstance(current, dict) else {}
        merged.update({key: [macs, None if shape is None else list(shape)] for key, (macs, shape) in counts.items()})
        self._file.write({code_version(): merged})

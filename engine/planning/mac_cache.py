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
from auglocal.engine.planning.user_cache import CacheFile

FORMAT = 1
FILE_NAME = "module_macs.json"

#: MACs per image and output shape (None: the module returned no tensor)
Count = tuple[int, tuple[int, ...] | None]
#: the most forward MACs per image one block may plausibly have (10 TMAC; ResNet-50 in all: 4.1 GMAC)
MAX_MACS = 10**13
#: the most dimensions, and elements per dimension, a cached output shape may have
MAX_DIMS, MAX_DIM = 8, 1 << 31


def parse_count(value: object) -> Count | None:
    """`[macs, shape or null]` as a Count, or None unless every figure is of the right type and plausible:
    MACs an int in 0..MAX_MACS, a shape of 0..MAX_DIMS ints in 1..MAX_DIM."""
    if not isinstance(value, list) or len(value) != 2:
        return None
    macs, shape = value
    if type(macs) is not int or not 0 <= macs <= MAX_MACS:
        return None
    if shape is None:
        return macs, None
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or \
            not all(type(d) is int and 1 <= d <= MAX_DIM for d in shape):
        return None
    return macs, tuple(shape)


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
        """Every well-formed, plausible count of this code version (see parse_count). Other versions' are
        ignored quietly; one malformed entry makes the whole file a miss, with one warning line: a file that
        holds one impossible figure is not trusted for the others."""
        entries = self._file.read().get(code_version())
        counts: dict[str, Count] = {}
        if entries is None:
            return counts
        if not isinstance(entries, dict):
            self._file.warn("its counts are not a JSON object")
            return counts
        for key, value in entries.items():
            count = parse_count(value)
            if count is not None and count[1] and str(count[1][0]) != key.rsplit("|", 1)[-1]:
                count = None                   # an output's first dimension is the batch it was counted on
            if count is None:
                self._file.warn(f"an implausible MAC count or output shape: {str(value)[:40]}")
                return {}
            counts[key] = count
        return counts

    def add(self, counts: dict[str, Count]) -> None:
        """Merge `counts` into the file (with what another process may have written since it was read)."""
        if not counts:
            return
        current = self._file.read().get(code_version())
        valid = isinstance(current, dict) and all(parse_count(v) is not None for v in current.values())
        merged = dict(current) if valid else {}        # never write an implausible count back
        merged.update({key: [macs, None if shape is None else list(shape)] for key, (macs, shape) in counts.items()})
        self._file.write({code_version(): merged})

    def forget(self, why: str) -> None:
        """Warn (one line naming the file) and drop this code version's counts: they misled a count."""
        self._file.warn(why)
        self._file.write({code_version(): {}})

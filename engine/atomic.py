"""Crash-safe file writes: temporary file in the same folder, fsync, rename; a full disk says so in one line."""

from __future__ import annotations

import errno
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

#: errors that mean "the file system has no room": the message names the file and the space it needed
SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write failed for lack of space. str() is one line: the file, the bytes it needed, the bytes free."""

    def __init__(self, message: str, path: str | Path, needed_bytes: int | None):
        super().__init__(errno.ENOSPC, message, str(path))
        self.message, self.path, self.needed_bytes = message, str(path), needed_bytes

    def __str__(self) -> str:
        return self.message


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system holding `path` (or its nearest parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def describe_io_error(err: OSError, path: str | Path | None = None, needed_bytes: int | None = None) -> str:
    """One line for a failed write: which file, why, and for a full disk how much room it needed and had."""
    path = path if path is not None else (err.filename or "?")
    if err.errno in SPACE_ERRNOS:
        need = f"needs {format_bytes(needed_bytes)}" if needed_bytes is not None else "needs more room"
        free = free_bytes(path)
        have = f", {format_bytes(free)} free there" if free is not None else ""
        return f"disk full: cannot write {path} ({need}{have}); free some space"
    reason = err.strerror or str(err)
    return f"cannot write {path}: {reason}"


def as_disk_full(err: OSError, path: str | Path, needed_bytes: int | None) -> OSError:
    """The same error, as a DiskFullError with a one-line message when it is about space; else unchanged."""
    if isinstance(err, DiskFullError) or err.errno not in SPACE_ERRNOS:
        return err
    return DiskFullError(describe_io_error(err, path, needed_bytes), path, needed_bytes)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, rename: a crash leaves old or new, never half.

    A full disk raises DiskFullError naming `path` and len(data), and leaves the old file in place."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        full = as_disk_full(err, path, len(data)) if isinstance(err, OSError) else err
        if full is not err:
            raise full from err
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save into memory, then atomic_write_bytes: the same crash guarantee for checkpoints."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


class DamagedFileError(ValueError):
    """A file the engine wrote that no longer reads back (truncated, overwritten, not a torch file)."""


def read_torch_state(path: Path) -> Any:
    """`torch.load` of a saved state dict (tensors only), with a damaged file reported by name instead of the
    torch reader's bare 'Invalid argument' or zip error. Files are written atomically (atomic_torch_save), so a
    damaged one was changed after the engine wrote it: a disk fault, a copy cut short, an edit."""
    import pickle
    import zipfile

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise DamagedFileError(f"{path} is damaged ({path.stat().st_size} bytes that torch cannot read: "
                               f"{type(err).__name__}: {err}); it was complete when written, so it changed since "
                               "(a cut-short copy, a disk fault): copy it again, or retrain") from err

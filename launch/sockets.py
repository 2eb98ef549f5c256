"""Private folders for the ipc:// sockets of a run, under one well-known parent, so stale ones can be removed.

Each folder is named `<launcher pid>-<run id>-<random>` inside `$AUGLOCAL_SOCKET_ROOT`, else
`$XDG_RUNTIME_DIR/auglocal`, else `<temp dir>/auglocal-<uid>` (mode 0700, owned by this user). A launcher
removes its folder when it stops; one killed outright cannot, so every run (and `auglocal-launch --cleanup`)
removes the folders whose launcher is no longer alive.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import psutil

ROOT_VAR = "AUGLOCAL_SOCKET_ROOT"


def socket_root() -> Path:
    """The parent of every socket folder of this user (created 0700 on first use)."""
    if os.environ.get(ROOT_VAR):
        root = Path(os.environ[ROOT_VAR])
    elif os.environ.get("XDG_RUNTIME_DIR") and os.access(os.environ["XDG_RUNTIME_DIR"], os.W_OK):
        root = Path(os.environ["XDG_RUNTIME_DIR"]) / "auglocal"
    else:
        root = Path(tempfile.gettempdir()) / f"auglocal-{os.getuid()}"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = root.lstat()
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"socket folder parent {root} is not a folder owned by this user; remove it or set "
                              f"{ROOT_VAR} to a private folder")
    return root


def make_socket_dir(run_id: str) -> str:
    """A fresh private folder for one attempt's sockets, named after this (launcher) process."""
    return tempfile.mkdtemp(prefix=f"{os.getpid()}-{run_id}-", dir=socket_root())


def _launcher_alive(name: str) -> bool:
    try:
        pid = int(name.split("-", 1)[0])
    except ValueError:
        return True                       # not one of ours: leave it alone
    if pid == os.getpid():
        return True
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def cleanup_stale() -> list[str]:
    """Remove socket folders whose launcher process is gone; returns their paths."""
    removed = []
    root = socket_root()
    for path in sorted(root.iterdir()):
        if path.is_dir() and not path.is_symlink() and not _launcher_alive(path.name):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed

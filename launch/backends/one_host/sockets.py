"""Private folders for the ipc:// sockets of a run, where no other user can reach, predict or block them.

Each attempt's sockets live in a fresh 0700 folder (`tempfile.mkdtemp`) inside a parent that only this user
can write:
- `$AUGLOCAL_SOCKET_ROOT` when set (tests; it must be a folder of this user that no one else may write), else
- `$XDG_RUNTIME_DIR/auglocal` when `$XDG_RUNTIME_DIR` is this user's private folder (systemd makes it 0700),
  the attempt folders named `<launcher pid>-<run id>-<random>`; else
- a fresh per-launcher folder `<temp dir>/auglocal-<uid>-<launcher pid>-<random>` (mkdtemp: 0700, a name no
  one can guess), the attempt folders `<run id>-<random>` inside it.
The last replaces the predictable `<temp dir>/auglocal-<uid>`: another local user who created that first
(mode 0777, or a symlink) blocked every run of this user. A name taken by someone else is simply avoided.

A launcher removes its folders when it stops; one killed outright cannot, so every run (and
`auglocal-launch --cleanup`) removes the folders whose launcher is no longer alive: in the shared parent by
their name, in the temp dir the per-launcher folders of this user (owned by this user, not a symlink) whose
launcher is gone, and the legacy `auglocal-<uid>` parent's.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import psutil
from auglocal.engine.config import UsageError
from auglocal.workers.links.zmq_link import _IPC_PATH_MAX as IPC_PATH_MAX

ROOT_VAR = "AUGLOCAL_SOCKET_ROOT"

#: this process's per-launcher folder in the temp dir, made on first use: (pid, path)
_launcher_dir: tuple[int, Path] | None = None


def _private(path: Path) -> bool:
    """A real folder (not a symlink) of this user that no one else may write into."""
    try:
        info = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o022


def _launcher_prefix() -> str:
    return f"auglocal-{os.getuid()}-"


def shared_root() -> Path | None:
    """The parent of this user's socket folders when it is a fixed one ($AUGLOCAL_SOCKET_ROOT or the runtime
    folder), created 0700 on first use; None: each launcher makes a private folder in the temp dir."""
    if os.environ.get(ROOT_VAR):
        root = Path(os.environ[ROOT_VAR])
        if root.is_symlink() or (root.exists() and not root.is_dir()):
            what = "a symlink" if root.is_symlink() else "not a folder"
            raise UsageError(f"${ROOT_VAR} {root} is {what}; set it to a private folder of this user (or unset "
                             "it for a fresh private one per run)")
        try:
            root.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as err:
            raise UsageError(f"${ROOT_VAR} {root}: cannot make the socket folder ({err.strerror}); set it to a "
                             "private folder of this user (or unset it)") from None
        if not _private(root):
            raise UsageError(f"${ROOT_VAR} {root} is another user's or writable by others; set it to a private "
                             "folder of this user (or unset it for a fresh private one per run)")
        return root
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _private(Path(runtime)):
        root = Path(runtime) / "auglocal"
        try:
            root.mkdir(mode=0o700, exist_ok=True)
        except OSError:
            return None
        if _private(root):
            return root
    return None                               # no private fixed parent: a fresh one per launcher instead


def _own_launcher_dir() -> Path:
    """This process's private folder in the temp dir (fresh 0700, unguessable name), made once."""
    global _launcher_dir
    if _launcher_dir is None or _launcher_dir[0] != os.getpid() or not _private(_launcher_dir[1]):
        path = tempfile.mkdtemp(prefix=f"{_launcher_prefix()}{os.getpid()}-")
        _launcher_dir = (os.getpid(), Path(path))
    return _launcher_dir[1]


#: the longest name below an attempt folder that an ipc socket gets (`results.sock`, `w<rank>.sock`), plus the
#: attempt folder itself (`<pid>-<run id>-<random>` or `<run id>-<random>`)
_ATTEMPT_AND_SOCKET = len("/4194304-0123456789ab-abcdefgh/results.sock")
#: the per-launcher folder's name in the temp dir
_LAUNCHER_NAME = len("/auglocal-4294967295-4194304-abcdefgh")


def check_socket_root(ipc: bool = True) -> None:
    """Exit 2 now, before a run folder is claimed, if the socket folders cannot be made private, or (`ipc`)
    their socket paths would pass the length Unix sockets allow. Makes nothing but $AUGLOCAL_SOCKET_ROOT
    (or `$XDG_RUNTIME_DIR/auglocal`), a folder of the user's own choosing that runs share."""
    root = shared_root()
    if root is None:
        temp = Path(tempfile.gettempdir())
        if not (temp.is_dir() and os.access(temp, os.W_OK | os.X_OK)):
            raise UsageError(f"the temp dir {temp} is not a folder this user may write; set $TMPDIR (or "
                             f"${ROOT_VAR}) to one")
        parent, extra = temp.absolute(), _LAUNCHER_NAME
    else:
        parent, extra = root.absolute(), 0
    if ipc and len(str(parent)) + extra + _ATTEMPT_AND_SOCKET > IPC_PATH_MAX:
        var = "$TMPDIR" if root is None else f"${ROOT_VAR}"
        raise UsageError(f"socket folder parent {parent} is too long for ipc:// socket paths (at most "
                         f"{IPC_PATH_MAX} characters); set {var} to a shorter folder, or use --transport tcp")


def make_socket_dir(run_id: str) -> str:
    """A fresh private folder for one attempt's sockets, found again by cleanup_stale if we are killed."""
    root = shared_root()
    if root is not None:
        return tempfile.mkdtemp(prefix=f"{os.getpid()}-{run_id}-", dir=root)
    try:
        return tempfile.mkdtemp(prefix=f"{run_id}-", dir=_own_launcher_dir())
    except FileNotFoundError:        # another attempt of this process just removed the emptied launcher folder
        return tempfile.mkdtemp(prefix=f"{run_id}-", dir=_own_launcher_dir())


def remove_socket_dir(path: str) -> None:
    """Remove an attempt's folder, and the per-launcher folder around it once that is empty."""
    shutil.rmtree(path, ignore_errors=True)
    parent = Path(path).parent
    if _launcher_dir is not None and parent == _launcher_dir[1]:
        try:
            parent.rmdir()
        except OSError:
            pass


def _launcher_alive(pid_text: str) -> bool:
    try:
        pid = int(pid_text)
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


def _stale_in(root: Path) -> list[Path]:
    """Folders `<pid>-...` in a parent of this user whose launcher is gone."""
    if not _private(root):
        return []
    return [p for p in sorted(root.iterdir())
            if _private(p) and not _launcher_alive(p.name.split("-", 1)[0])]


def _stale_launcher_dirs() -> list[Path]:
    """This user's per-launcher folders in the temp dir whose launcher is gone (others' are never touched)."""
    found = []
    prefix = _launcher_prefix()
    for p in sorted(Path(tempfile.gettempdir()).glob(prefix + "*-*")):
        pid = p.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and _private(p) and not _launcher_alive(pid):
            found.append(p)
    return found


def cleanup_stale() -> list[str]:
    """Remove socket folders whose launcher process is gone; returns their paths."""
    root = shared_root()
    if root is not None and os.environ.get(ROOT_VAR):
        stale = _stale_in(root)
    else:
        legacy = Path(tempfile.gettempdir()) / f"auglocal-{os.getuid()}"
        stale = (_stale_in(root) if root is not None else []) + _stale_in(legacy) + _stale_launcher_dirs()
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return [str(p) for p in stale]

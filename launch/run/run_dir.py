"""The run folder: config, metrics as JSON lines, saved networks and plots, each written atomically; one run
at a time holds it (an exclusive lock), and a new run never mixes with an old one."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from auglocal.engine.atomic import as_disk_full, atomic_torch_save, atomic_write_bytes
from auglocal.engine.config import UsageError

LOCK_FILE = "run.lock"
#: what a run writes into its folder (--overwrite removes exactly these)
RUN_FILES = ("config.json", "run.json", "runtime.json", "data.json", "metrics.jsonl", "plan.json", "summary.json",
             "failure.json", "model.pt", "aux.pt", "torchvision.pt", "curves.png", "gantt.png")
RUN_FOLDERS = ("checkpoints", "layers")


def folder_name(model: str) -> str:
    """A model spec as one folder name: "pkg.mod:net" -> pkg.mod.net, "/x/nets.py:net" -> nets.net (a spec's
    slashes and colons would make folders, or names some file systems refuse)."""
    if ":" in model:
        where, function = model.rsplit(":", 1)
        where = Path(where).stem if where.endswith(".py") else where
        model = f"{where}.{function}"
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", model).strip("._") or "model"


def default_run_dir(model: str, rule: str, root: str = "runs") -> Path:
    """runs/<model>-<rule>-<timestamp>, unique even when two runs start in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{folder_name(model)}-{rule}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def holds_run(path: Path) -> bool:
    """Whether the folder already holds (part of) a run: its config, identity or checkpoints."""
    return any((path / name).exists() for name in ("config.json", "run.json", "checkpoints"))


def clear_run(path: Path) -> None:
    """--overwrite: remove the previous run's files (and nothing else) so that none mixes with the new run."""
    for name in RUN_FOLDERS:
        shutil.rmtree(path / name, ignore_errors=True)
    for name in RUN_FILES:
        (path / name).unlink(missing_ok=True)
    for trace in path.glob("trace_worker*.jsonl"):
        trace.unlink()


class RunLock:
    """An exclusive flock on RUN/run.lock for the whole run; the file names the holder (pid, host, start).

    The kernel drops the lock when the holder exits in any way (SIGKILL included): no stale locks."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if self.fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"--out {self.path} is a file, not a folder; give a folder for the run (new or "
                             "holding a run to --resume)")
        lock = self.path / LOCK_FILE
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            raise UsageError(f"--out {self.path}: cannot write there ({err.strerror}); choose a folder this user "
                             "may write") from None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 512).decode(errors="replace").strip() or "a process that just started"
                os.close(fd)
                raise UsageError(f"run folder {self.path} is in use by another run ({holder}); wait until it "
                                 "ends, or choose another --out") from None
            if _same_file(fd, lock):
                break
            os.close(fd)            # a failed claim removed the file we locked (RunClaim): lock the new one
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                     "\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)        # the file stays: unlinking a flock file races with the next locker
            self.fd = None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), path.stat())
    except FileNotFoundError:
        return False


class RunClaim(RunLock):
    """The lock of one attempt at a run, which remembers what the folder held before it: an attempt that fails
    before its run holds anything (no config.json, run.json or checkpoints/) removes everything it made, the
    lock and the folder included; a --resume refused for bad input puts runtime.json and config.json back.
    A run that got as far as its config stays, to be resumed."""

    KEPT = ("runtime.json", "config.json")      # what a --resume rewrites before it trains

    def __init__(self, path: str | Path, resume: bool):
        super().__init__(path)
        self.resume = resume
        self.made: list[Path] = []                  # folders the claim creates, the run folder first
        self.before: set[str] = set()
        self.saved: dict[str, bytes] = {}

    def acquire(self) -> None:
        self.made = [p for p in (self.path, *self.path.absolute().parents) if not p.exists()]
        had_lock = (self.path / LOCK_FILE).exists()
        super().acquire()
        self.before = set(os.listdir(self.path)) - ({LOCK_FILE} if not had_lock else set())
        self.saved = {n: (self.path / n).read_bytes() for n in self.KEPT if (self.path / n).is_file()}

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                self.undo(bad_input=issubclass(exc_type, UsageError))
        finally:
            self.release()

    def undo(self, bad_input: bool) -> None:
        """Called holding the lock, so no other run can have claimed the folder meanwhile."""
        if not holds_run(self.path):
            for name in sorted(set(os.listdir(self.path)) - self.before):
                target = self.path / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
            for folder in self.made:               # ENOTEMPTY: something else lives there now; keep it
                with contextlib.suppress(OSError):
                    folder.rmdir()
        elif self.resume and bad_input:
            for name, content in self.saved.items():
                atomic_write_bytes(self.path / name, content)


def claim_run_folder(path: str | Path, *, resume: bool, overwrite: bool) -> RunClaim:
    """Lock the run folder; a new run into a folder holding a run needs --overwrite (which clears it)."""
    lock = RunClaim(path, resume)
    lock.acquire()
    try:
        if not resume and holds_run(lock.path):
            if not overwrite:
                raise UsageError(f"{lock.path} already holds a run; continue it with --resume {lock.path}, "
                                 "replace it with --overwrite, or choose another --out")
            clear_run(lock.path)
    except BaseException as err:
        lock.__exit__(type(err), err, None)
        raise
    return lock


def _plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


class RunDir:
    """One training run on disk. Files: config.json, metrics.jsonl, model.pt, aux.pt, plan.json, curves.png."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._metrics = open(self.path / "metrics.jsonl", "a", encoding="utf-8")
        self.lines = len(self.read_metrics())

    def truncate_metrics(self, lines: int) -> None:
        """Forget records written after a checkpoint: a restarted attempt writes them again."""
        self._metrics.close()
        rows = (self.path / "metrics.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
        atomic_write_bytes(self.path / "metrics.jsonl", "".join(rows).encode())
        self._metrics = open(self.path / "metrics.jsonl", "a", encoding="utf-8")
        self.lines = lines

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_bytes(self.path / name, json.dumps(obj, indent=2, default=_plain).encode())

    def log(self, kind: str, record: Any) -> None:
        """Append one metrics record (a dataclass or dict) tagged with its kind ('step', 'epoch', ...)."""
        row = asdict(record) if is_dataclass(record) else dict(record)
        row = {"kind": kind, **row}
        line = json.dumps(row, default=_plain) + "\n"
        try:
            self._metrics.write(line)
            self._metrics.flush()
        except OSError as err:
            full = as_disk_full(err, self.path / "metrics.jsonl", len(line))
            if full is err:
                raise
            raise full from err
        self.lines += 1

    def save_state(self, name: str, state: dict) -> None:
        atomic_torch_save(state, self.path / name)

    def read_metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def close(self) -> None:
        self._metrics.close()


def record_data(path: str | Path, cfg, data) -> None:
    """data.json: what was trained on, and the normalisation the network expects of its input (the training
    set's channel mean and std): what using the trained network (auglocal.load) needs besides its weights."""
    record = {"dataset": cfg.dataset, "num_classes": cfg.num_classes, "input_size": cfg.input_size,
              "train_size": data.train_size, "test_size": data.test_size, "mean": list(data.mean),
              "std": list(data.std)}
    atomic_write_bytes(Path(path) / "data.json", json.dumps(record, indent=2).encode())


def resumable(out: str | None, sequential: bool = False) -> bool:
    """A pipelined run whose folder has what --resume needs (its checkpoints are verified then)."""
    if sequential or not out:
        return False
    return all((Path(out) / name).is_file() for name in ("config.json", "run.json"))

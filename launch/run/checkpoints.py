"""Committed checkpoints of a run: folders of per-layer files plus a sealed manifest, and a LATEST pointer.

A checkpoint counts only once its manifest exists; the manifest and then LATEST are written atomically after
every worker has acknowledged its layer files. The manifest records whose checkpoint it is (the run's id and
the digest of the config that decides what is computed) and the size and SHA-256 of every file beside it, and
is itself sealed by a SHA-256 of its content. Before any worker starts from a checkpoint, `verified_latest`
checks all of that, newest first, and falls back to the newest intact one: a crash, a flipped bit or a
truncated file can cost the steps since an older checkpoint, never the run's correctness.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from auglocal.engine.atomic import atomic_write_bytes
from auglocal.engine.config import RunConfig, UsageError, config_digest

#: committed checkpoints kept on disk: the newest, and an older one to fall back to when it is damaged
KEEP = 2
MANIFEST = "manifest.json"
UNCOMMITTED = "never committed (no manifest.json)"
RUN_FILE = "run.json"
_CHUNK = 1 << 20


class CheckpointError(RuntimeError):
    """No intact checkpoint to continue from, though the run has some: the CLI prints it and exits 1."""


@dataclass(frozen=True)
class RunIdentity:
    """Whose checkpoint: the run's id (made once, when the run folder is started) and its config digest."""

    run_id: str
    config_sha256: str

    def describe(self) -> str:
        return f"run {self.run_id} (config {self.config_sha256[:12]})"

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "config_sha256": self.config_sha256}


def start_identity(run_dir: str | Path, cfg: RunConfig, resume: bool) -> RunIdentity:
    """A new run gets a fresh id, saved in run_dir/run.json; a resumed run keeps the id it was started with."""
    path = Path(run_dir) / RUN_FILE
    digest = config_digest(cfg)
    if not resume:
        identity = RunIdentity(uuid.uuid4().hex, digest)
        record = {**identity.to_dict(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_bytes(path, json.dumps(record, indent=1).encode())
        return identity
    try:
        run_id = json.loads(path.read_bytes())["run_id"]
        if not isinstance(run_id, str) or not run_id:
            raise TypeError
    except FileNotFoundError:
        raise UsageError(f"--resume {run_dir}: no {RUN_FILE} there, so its checkpoints cannot be verified (started "
                         "by an older auglocal-launch, or the file was removed); start the run again with "
                         "--overwrite") from None
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"--resume {run_dir}: {path} is damaged (expected the JSON auglocal-launch wrote, with a "
                         "run_id); start the run again with --overwrite") from None
    return RunIdentity(run_id, digest)


def file_record(path: Path) -> dict:
    """Size and SHA-256 of one file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def _seal(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _stderr(line: str) -> None:
    print(f"auglocal-launch: {line}", file=sys.stderr)


#: manifest fields a resume reads, with their types
_FIELDS = {"id": int, "next_epoch": int, "next_step": int, "global_step": int, "tracker": dict, "identity": dict,
           "files": dict}


class ForeignCheckpoint(UsageError):
    """A checkpoint of another run (or of this run under another config): never continued, exit 2."""


class CheckpointStore:
    """run_dir/checkpoints/ckpt-000001/{layer_000.pt, ..., head.pt, manifest.json} and run_dir/checkpoints/LATEST."""

    def __init__(self, run_dir: str | Path, identity: RunIdentity | None = None):
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.identity = identity
        self.on_commit: Callable[[int, dict], None] | None = None   # told of each committed checkpoint
        self.pinned: int | None = None   # keep checkpoints from this id on: a one-worker recovery reads them

    def dir_for(self, ckpt_id: int) -> Path:
        return self.root / f"ckpt-{ckpt_id:06d}"

    def prepare(self, ckpt_id: int) -> Path:
        path = self.dir_for(ckpt_id)
        if path.exists():
            shutil.rmtree(path)    # leftovers of an attempt that never committed this id (or a damaged one)
        path.mkdir(parents=True)
        return path

    def commit(self, ckpt_id: int, manifest: dict) -> None:
        """Add the run identity and every file's size and SHA-256 to `manifest`, seal it, write it, point LATEST."""
        directory = self.dir_for(ckpt_id)
        files = {p.name: file_record(p) for p in sorted(directory.iterdir())
                 if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")}
        body = {**manifest, "identity": self.identity.to_dict() if self.identity else None, "files": files}
        body["sha256"] = _seal(body)
        atomic_write_bytes(directory / MANIFEST, json.dumps(body, indent=1).encode())
        atomic_write_bytes(self.root / "LATEST", f"{ckpt_id}\n".encode())
        self.prune(ckpt_id)
        if self.on_commit is not None:
            self.on_commit(ckpt_id, manifest)

    def ids(self) -> list[int]:
        """Ids of every ckpt-* folder, committed or not, oldest first."""
        found = []
        for path in self.root.glob("ckpt-*"):
            try:
                found.append(int(path.name.split("-", 1)[1]))
            except ValueError:
                continue
        return sorted(found)

    def committed_ids(self) -> list[int]:
        return [i for i in self.ids() if (self.dir_for(i) / MANIFEST).exists()]

    def latest(self) -> tuple[int, dict] | None:
        """The newest committed checkpoint (id, manifest) WITHOUT verification (tests, tools); runs use
        verified_latest."""
        committed = self.committed_ids()
        if not committed:
            return None
        return committed[-1], json.loads((self.dir_for(committed[-1]) / MANIFEST).read_text())

    def problem(self, ckpt_id: int) -> str | None:
        """What is wrong with checkpoint `ckpt_id` (None: intact). Raises ForeignCheckpoint for another run's."""
        directory = self.dir_for(ckpt_id)
        try:
            manifest = json.loads((directory / MANIFEST).read_bytes())
        except FileNotFoundError:
            return UNCOMMITTED
        except (ValueError, UnicodeDecodeError):
            return "manifest.json is not valid JSON"
        if not isinstance(manifest, dict):
            return "manifest.json is not a JSON object"
        missing = [k for k, t in _FIELDS.items() if not isinstance(manifest.get(k), t) or
                   isinstance(manifest.get(k), bool)]
        if "sha256" not in manifest or missing:
            old = "identity" not in manifest and "files" not in manifest and "sha256" not in manifest and manifest
            return ("manifest.json has no run identity or checksums (written by an older auglocal-launch)" if old
                    else f"manifest.json lacks {', '.join(missing) or 'its seal'}")
        body = {k: v for k, v in manifest.items() if k != "sha256"}
        if _seal(body) != manifest["sha256"]:
            return "manifest.json fails its SHA-256 seal (changed after it was written)"
        if manifest["id"] != ckpt_id:
            return f"manifest.json belongs to checkpoint {manifest['id']}, found in {directory.name}"
        theirs = RunIdentity(str(manifest["identity"].get("run_id")), str(manifest["identity"].get("config_sha256")))
        if self.identity is not None and theirs != self.identity:
            raise ForeignCheckpoint(f"checkpoint {ckpt_id} in {self.root} belongs to {theirs.describe()}, not to the "
                                    f"run in {self.run_dir}, {self.identity.describe()}; a checkpoint only continues "
                                    "its own run (start a new run with --overwrite or another --out)")
        for name, record in manifest["files"].items():
            path = directory / name
            if not path.is_file():
                return f"{name} is missing"
            size = path.stat().st_size
            if size != record.get("size"):
                return f"{name} has {size} bytes, its manifest says {record.get('size')} (truncated or replaced)"
            if file_record(path)["sha256"] != record.get("sha256"):
                return f"{name} fails its SHA-256 checksum (damaged)"
        return None

    def verified_latest(self, report: Callable[[str], None] = _stderr) -> tuple[int, dict] | None:
        """The newest intact checkpoint (id, manifest), verified before any worker loads it, or None when the
        run has committed none yet. Each damaged or incomplete newer one, and a garbled or stale LATEST, is
        reported (one line each) and skipped. Raises ForeignCheckpoint for another run's checkpoint and
        CheckpointError when checkpoints exist but none is intact: never a silent restart from scratch."""
        notes, damaged = [], []
        pointer = self._pointer(notes)
        for ckpt_id in reversed(self.ids()):
            problem = self.problem(ckpt_id)
            if problem is None:
                if pointer is not None and pointer not in self.ids():
                    notes.append(f"checkpoints/LATEST names checkpoint {pointer}, which does not exist")
                for line in notes + [f"checkpoint {i}: {p}; skipped" for i, p in damaged
                                     if p != UNCOMMITTED or pointer is None or i <= pointer]:
                    report(line)     # (a checkpoint interrupted after the last commit is no news)
                return ckpt_id, json.loads((self.dir_for(ckpt_id) / MANIFEST).read_text())
            damaged.append((ckpt_id, problem))
        committed = [(i, p) for i, p in damaged if p != UNCOMMITTED]
        if pointer is None and not committed:
            for line in notes:
                report(line)
            return None
        what = "; ".join(f"checkpoint {i}: {p}" for i, p in damaged) or "no checkpoint folder"
        raise CheckpointError(f"no intact checkpoint in {self.root} ({'; '.join(notes + [what])}); the run cannot "
                              f"continue: start it again with --overwrite")

    def _pointer(self, notes: list[str]) -> int | None:
        """The id LATEST names, or None (with a note when it exists but is garbled)."""
        path = self.root / "LATEST"
        try:
            text = path.read_bytes().decode().strip()
            return int(text)
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            notes.append("checkpoints/LATEST is garbled (expected a checkpoint number); found the checkpoints by "
                         "scanning their folders")
            return None

    def prune(self, newest: int) -> None:
        """Keep the newest KEEP committed checkpoints up to `newest`; drop older ones and uncommitted ids below it.
        Ids above `newest` are checkpoints still being written."""
        keep = set([i for i in self.committed_ids() if i <= newest][-KEEP:])
        for ckpt_id in self.ids():
            if ckpt_id < newest and ckpt_id not in keep and (self.pinned is None or ckpt_id < self.pinned):
                shutil.rmtree(self.dir_for(ckpt_id), ignore_errors=True)

    def resume_point(self, report: Callable[[str], None] = _stderr) -> tuple[int, dict] | None:
        """verified_latest, and one line on stdout saying where the run continues."""
        found = self.verified_latest(report)
        if found is None:
            print("auglocal-launch: no committed checkpoint yet; resuming from the first minibatch")
        else:
            ckpt_id, m = found
            print(f"auglocal-launch: resuming from checkpoint {ckpt_id} (verified; next minibatch: epoch "
                  f"{m['next_epoch'] + 1}, step {m['next_step']}; {m['global_step']} minibatches done)")
        return found

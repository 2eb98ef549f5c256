"""Committed checkpoints of a run: folders of per-layer files plus a manifest, and a LATEST pointer.

A checkpoint counts only once its manifest exists and LATEST names it; both are written atomically after
every worker has acknowledged its layer files. A crash at any moment therefore leaves the previous
committed checkpoint intact and loadable.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from engine.atomic import atomic_write_bytes

KEEP = 2


class CheckpointStore:
    """run_dir/checkpoints/ckpt-000001/{layer_000.pt, ..., head.pt, manifest.json} and run_dir/checkpoints/LATEST."""

    def __init__(self, run_dir: str | Path):
        self.root = Path(run_dir) / "checkpoints"
        self.pinned: int | None = None   # keep checkpoints from this id on: a one-worker recovery reads them

    def dir_for(self, ckpt_id: int) -> Path:
        return self.root / f"ckpt-{ckpt_id:06d}"

    def prepare(self, ckpt_id: int) -> Path:
        path = self.dir_for(ckpt_id)
        if path.exists():
            shutil.rmtree(path)    # leftovers of an attempt that never committed this id
        path.mkdir(parents=True)
        return path

    def commit(self, ckpt_id: int, manifest: dict) -> None:
        atomic_write_bytes(self.dir_for(ckpt_id) / "manifest.json", json.dumps(manifest, indent=1).encode())
        atomic_write_bytes(self.root / "LATEST", f"{ckpt_id}\n".encode())
        self.prune(ckpt_id)

    def latest(self) -> tuple[int, dict] | None:
        """The last committed checkpoint (id, manifest), or None when the run has none."""
        try:
            ckpt_id = int((self.root / "LATEST").read_text().strip())
            manifest = json.loads((self.dir_for(ckpt_id) / "manifest.json").read_text())
        except FileNotFoundError:
            return None
        return ckpt_id, manifest

    def prune(self, newest: int) -> None:
        """Keep the newest KEEP committed checkpoints; drop older ones and uncommitted ids below newest."""
        for path in sorted(self.root.glob("ckpt-*")):
            ckpt_id = int(path.name.split("-")[1])
            if ckpt_id <= newest - KEEP and (self.pinned is None or ckpt_id < self.pinned):
                shutil.rmtree(path, ignore_errors=True)

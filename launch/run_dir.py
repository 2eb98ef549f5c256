"""The run folder: config, metrics as JSON lines, saved networks and plots, each written atomically."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from engine.atomic import atomic_torch_save, atomic_write_bytes


def default_run_dir(model: str, rule: str, root: str = "runs") -> Path:
    """runs/<model>-<rule>-<timestamp>, unique even when two runs start in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{model}-{rule}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


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
        self._metrics.write(json.dumps(row, default=_plain) + "\n")
        self._metrics.flush()
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

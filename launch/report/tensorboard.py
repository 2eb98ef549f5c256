"""TensorBoard event files of a run (run_dir/tensorboard/), where PyTorch users look first.

A sink the trainers call with the records they already write to metrics.jsonl. Without the optional
`tensorboard` package (pip install -e '.[tensorboard]'), or with --no-tensorboard, every call does nothing.
Tags (see docs/metrics.md):

    train/loss, train/accuracy, train/lr, train/images_per_s      per minibatch (x = global step)
    local_loss/layer_NNN                                          each local layer's loss per minibatch
                                                                  (the top layer's is the global loss)
    workers/busy/worker_R, workers/queue/worker_R                 per worker, every few minibatches
    epoch/train_loss, epoch/train_accuracy, epoch/test_accuracy, epoch/best_accuracy, epoch/seconds
                                                                  per epoch, at the step the epoch closed
    events/checkpoint, events/restarts                            checkpoint ids and the restart count
    pictures/<name>                                               the run's PNGs, once at the end

After a restart from a checkpoint the writer is reopened with purge_step: TensorBoard drops what the
failed attempt wrote after the checkpoint, so the replayed minibatches do not appear twice.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from auglocal.engine.trainer import EpochRecord, StepRecord
from auglocal.launch.report.worker_usage import WorkerUsage

FOLDER = "tensorboard"


def _writer_class() -> Any:
    """torch's SummaryWriter, or None when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class TensorBoardSink:
    """Writes a run's records as TensorBoard scalars, text and images; a no-op without a writer."""

    def __init__(self, log_dir: Path | None):
        self.log_dir = log_dir
        self._writer: Any = None
        self._last_step = 0
        self._restarts = 0
        self._pending: list[str] = []

    @classmethod
    def open(cls, run_dir: str | Path, enabled: bool = True) -> TensorBoardSink:
        """The sink of run_dir/tensorboard/, or a silent one when disabled or tensorboard is not installed."""
        if not enabled:
            return cls(None)
        if _writer_class() is None:
            print("auglocal-launch: the tensorboard package is not installed: no TensorBoard event files "
                  "(pip install -e '.[tensorboard]', or --no-tensorboard to silence this)", file=sys.stderr)
            return cls(None)
        return cls(Path(run_dir) / FOLDER)

    @property
    def enabled(self) -> bool:
        return self.log_dir is not None

    def _w(self) -> Any:
        if self._writer is None and self.log_dir is not None:
            self._writer = _writer_class()(log_dir=str(self.log_dir))
        return self._writer

    def begin_attempt(self, steps_done: int) -> None:
        """A (re)start after `steps_done` minibatches: drop anything written for later steps, note restarts."""
        if self.log_dir is None:
            return
        if self._writer is not None:
            self._writer.close()
        self._writer = _writer_class()(log_dir=str(self.log_dir),
                                       purge_step=steps_done + 1 if steps_done else None)
        self._last_step = steps_done
        self._flush_restarts(steps_done + 1)

    def _flush_restarts(self, step: int) -> None:
        for detail in self._pending:
            self._restarts += 1
            self._w().add_scalar("events/restarts", self._restarts, step)
            self._w().add_text("events", f"restart {self._restarts} (training resumes at step {step}): {detail}",
                               step)
        self._pending.clear()

    def step(self, r: StepRecord) -> None:
        if self.log_dir is None:
            return
        w, g = self._w(), r.global_step
        self._last_step = g
        w.add_scalar("train/loss", r.loss, g)
        w.add_scalar("train/accuracy", r.accuracy, g)
        w.add_scalar("train/lr", r.lr, g)
        w.add_scalar("train/images_per_s", r.images_per_s, g)
        for layer, loss in sorted((int(k), float(v)) for k, v in r.local_losses.items()):
            w.add_scalar(f"local_loss/layer_{layer:03d}", loss, g)

    def epoch(self, r: EpochRecord) -> None:
        if self.log_dir is None:
            return
        w, g = self._w(), self._last_step
        for name in ("train_loss", "train_accuracy", "test_accuracy", "best_accuracy", "seconds"):
            w.add_scalar(f"epoch/{name}", getattr(r, name), g)

    def workers(self, u: WorkerUsage) -> None:
        if self.log_dir is None:
            return
        w = self._w()
        for rank, busy in enumerate(u.busy):
            w.add_scalar(f"workers/busy/worker_{rank}", busy, u.global_step)
        for rank, depth in enumerate(u.queue):
            if depth is not None:
                w.add_scalar(f"workers/queue/worker_{rank}", depth, u.global_step)

    def checkpoint(self, ckpt_id: int, manifest: dict) -> None:
        """A committed checkpoint (the CheckpointStore's on_commit hook), at the step it was taken after."""
        if self.log_dir is None:
            return
        step = int(manifest.get("global_step", self._last_step))
        self._w().add_scalar("events/checkpoint", ckpt_id, step)

    def restart(self, detail: str) -> None:
        """A failed attempt; written when the next attempt begins (after the purge), or at close."""
        if self.log_dir is not None:
            self._pending.append(detail)

    def pictures(self, paths: list[Path]) -> None:
        """The run's PNGs as TensorBoard images (IMAGES tab)."""
        if self.log_dir is None:
            return
        import matplotlib.image

        for path in paths:
            pixels = matplotlib.image.imread(str(path))[..., :3]
            self._w().add_image(f"pictures/{Path(path).stem}", pixels, self._last_step, dataformats="HWC")

    def close(self) -> None:
        if self._pending:
            self._flush_restarts(self._last_step)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

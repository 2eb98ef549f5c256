"""Per-worker busy fraction and queue depth over time, sampled from the coordinator's statistics.

Written as `workers` rows of metrics.jsonl (and to TensorBoard) every few minibatches, rather than derived
from the `--trace` spans: the statistics are there in every run at the cost of one line per sample, while a
trace is opt-in and writes a span per module and minibatch. The rows are cut back with the other metrics
when a run restarts from a checkpoint, so the record of a resumed run has no duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # a type only: report/ reads what run/ hands it and imports nothing of run/
    from auglocal.launch.run.progress import PipelineStats

#: about this many samples per run: enough for a picture, few enough to keep metrics.jsonl small
SAMPLES_PER_RUN = 200


@dataclass
class WorkerUsage:
    """One sample: over the interval since the previous one, the fraction of time each worker was busy
    (computing, not waiting or sending), and each worker's queue at the end of it.

    `queue[r]` for r >= 1 is the number of minibatches worker r-1 has finished that worker r has not: the
    work waiting at (or in) worker r, bounded by the credit window. Worker 0 is fed by the coordinator
    (also within the window) and its entry is None.
    """

    global_step: int
    seconds: float
    busy: list[float]
    queue: list[int | None]


class UsageSampler:
    """Turns the cumulative busy seconds and report counts of one attempt into interval samples."""

    def __init__(self, num_workers: int, total_steps: int, every: int | None = None):
        self.num_workers = num_workers
        self.every = every or max(1, total_steps // SAMPLES_PER_RUN)
        self._last_t: float | None = None
        self._last_busy = [0.0] * num_workers

    def sample(self, stats: PipelineStats, global_step: int, now: float) -> WorkerUsage | None:
        """A sample every `every` steps (None in between); the first one covers the attempt's start."""
        if global_step % self.every:
            return None
        start = stats.started if self._last_t is None else self._last_t
        interval = max(now - start, 1e-9)
        busy_s = [float(stats.busy_s.get(r, 0.0)) for r in range(self.num_workers)]
        busy = [min(1.0, max(0.0, (b - prev) / interval)) for b, prev in zip(busy_s, self._last_busy, strict=True)]
        done = [int(stats.reported.get(r, 0)) for r in range(self.num_workers)]
        queue: list[int | None] = [None] + [max(0, done[r - 1] - done[r]) for r in range(1, self.num_workers)]
        self._last_t, self._last_busy = now, busy_s
        return WorkerUsage(global_step, now - stats.started, busy, queue)

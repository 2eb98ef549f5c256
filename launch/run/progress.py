"""Turning worker reports into step and epoch records, and the part of that state a checkpoint keeps."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from auglocal.engine.config import RunConfig, optim_and_schedule
from auglocal.engine.nonfinite import add_skips, format_skips, skipped_layers
from auglocal.engine.trainer import EpochRecord, StepRecord
from auglocal.workers.wire.protocol import EvalResultMeta, MetricsMeta


@dataclass
class PipelineStats:
    """What the coordinator learned while the run went (per attempt, except where noted)."""

    busy_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    cpu_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))     # train steps' CPU seconds
    started: float = 0.0
    first_step_done: float | None = None
    steps_done: int = 0
    images_done: int = 0
    updates: dict[int, int] = field(default_factory=dict)
    max_in_flight: dict[int, int] = field(default_factory=dict)   # link into worker r -> most unconsumed
    step_done_at: list[float] = field(default_factory=list)         # perf_counter when each step finished
    gpu_peak_bytes: dict[int, int] = field(default_factory=dict)
    reported: dict[int, int] = field(default_factory=lambda: defaultdict(int))   # training steps each rank did
    replay_log: dict[int, dict] = field(default_factory=dict)     # worker -> its replay log's costs

    def busy_fractions(self, now: float) -> list[float]:
        elapsed = max(now - self.started, 1e-9)
        return [self.busy_s[r] / elapsed for r in sorted(self.busy_s)]

    def cpu_s_per_step(self) -> list[float]:
        """Each worker's mean CPU seconds per training step (what its compute costs without time-slicing)."""
        return [self.cpu_s[r] / max(self.reported[r], 1) for r in sorted(self.cpu_s)]

    def steady_images_per_s(self, batch_size: int, skip: int = 2) -> float | None:
        """Throughput after the pipeline has filled: steps skip.. end, timed between completions."""
        t = self.step_done_at[skip:]
        if len(t) < 2:
            return None
        return (len(t) - 1) * batch_size / (t[-1] - t[0])


@dataclass
class TrackerState:
    """The metrics state at a checkpoint: closed epochs, the open epoch's sums, lines in metrics.jsonl."""

    history: list[dict] = field(default_factory=list)
    best: float = 0.0
    train: dict[str, list[float]] = field(default_factory=dict)    # epoch -> [loss * n, correct, n]
    done_train: dict[str, int] = field(default_factory=dict)
    steps_done: int = 0
    metrics_lines: int = 0
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)   # epoch -> layer -> updates skipped

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrackerState:
        return cls(**d)


@dataclass
class _PendingStep:
    """Reports of one minibatch so far: every worker's local losses, and the top worker's hits."""

    losses: dict[int, float] = field(default_factory=dict)
    reports: int = 0
    n: int = 0
    correct: int | None = None
    done: float = 0.0          # the top worker's clock when it finished the step (MetricsMeta.done)


class EpochTracker:
    """Turns workers' reports into step and epoch records, in step order.

    A step's record is written once every worker has reported that step (with all its local losses), not
    when the last worker does: upstream reports may arrive later than the top's (the top group can be the
    cheapest stage). Each worker reports its steps in order over one link, so steps complete in order, and
    when every worker has acknowledged a checkpoint marker exactly the steps before it are complete.
    """

    def __init__(self, cfg: RunConfig, steps: int, n_test: int, num_workers: int,
                 on_step: Callable[[StepRecord], None], on_epoch: Callable[[EpochRecord], None],
                 lines: Callable[[], int], state: TrackerState | None = None,
                 stats: PipelineStats | None = None, replicas: int = 1):
        self.cfg, self.steps, self.n_test = cfg, steps, n_test
        self.replicas = replicas           # each replica's last worker reports its shard's hits and test result
        self.stages = num_workers // replicas
        self.on_step, self.on_epoch, self.lines = on_step, on_epoch, lines
        self.num_workers = num_workers
        self.schedule = optim_and_schedule(cfg)[1]
        self.stats = stats or PipelineStats()
        self.pending: dict[tuple[int, int], _PendingStep] = {}
        self.test: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])   # correct, n, batches
        self.fed: dict[int, int] = {}
        self.epoch_started: dict[int, float] = {}
        self.last_step_t: float | None = None
        self.last_done = 0.0        # the top worker's clock at the previous step's end (0: not known)
        state = state or TrackerState()
        self.history = [EpochRecord(**h) for h in state.history]
        self.best = state.best
        self.train: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        self.train.update({int(k): list(v) for k, v in state.train.items()})
        self.done_train: dict[int, int] = defaultdict(int)
        self.done_train.update({int(k): v for k, v in state.done_train.items()})
        self.steps_done = state.steps_done
        self.skipped: dict[int, dict[str, int]] = defaultdict(dict)
        self.skipped.update({int(k): dict(v) for k, v in state.skipped.items()})

    def snapshot(self) -> TrackerState:
        return TrackerState([asdict(h) for h in self.history], self.best,
                            {str(k): list(v) for k, v in self.train.items()},
                            {str(k): v for k, v in self.done_train.items()}, self.steps_done, self.lines(),
                            {str(k): dict(v) for k, v in self.skipped.items()})

    def skipped_totals(self) -> dict[str, int]:
        """Module updates skipped over the whole run (--nonfinite skip), by first layer id, as in summary.json."""
        totals: dict[str, int] = {}
        for counts in self.skipped.values():
            for layer, n in counts.items():
                totals[layer] = totals.get(layer, 0) + n
        return dict(sorted(totals.items(), key=lambda kv: int(kv[0])))

    def expect_epoch(self, epoch: int, fed: int) -> None:
        """All training batches of `epoch` are fed (`fed` = how many, counted from the epoch's start)."""
        self.fed[epoch] = fed
        self._maybe_close(epoch)

    def eval_result(self, epoch: int, meta: EvalResultMeta) -> None:
        t = self.test[epoch]
        t[0] += meta.correct
        t[1] += meta.n
        t[2] += 1
        self._maybe_close(epoch)

    def metrics(self, rank: int, epoch: int, step: int, meta: MetricsMeta) -> None:
        """One worker's report of one training step; the step's record follows its last report."""
        self.stats.busy_s[rank] += meta.busy
        self.stats.cpu_s[rank] += meta.cpu
        self.stats.reported[rank] += 1
        entry = self.pending.setdefault((epoch, step), _PendingStep())
        entry.losses.update({int(k): v for k, v in meta.losses.items()})
        entry.reports += 1
        if rank % self.stages == self.stages - 1:     # a last worker: its shard's images and hits
            entry.n += meta.n
            entry.correct = (entry.correct or 0) + (meta.correct or 0)
            if rank == self.stages - 1:               # replica 0's clock times the step (one clock, one host)
                entry.done = meta.done
        if entry.reports == self.num_workers:
            del self.pending[(epoch, step)]
            self._step_done(epoch, step, entry)

    def _step_done(self, epoch: int, step: int, entry: _PendingStep) -> None:
        now = time.perf_counter()
        n, correct = entry.n, entry.correct or 0
        top = entry.losses[max(entry.losses)]
        tr = self.train[epoch]
        tr[0] += top * n
        tr[1] += correct
        tr[2] += n
        self.epoch_started.setdefault(epoch, now)
        prev = self.last_step_t if self.last_step_t is not None else self.stats.started
        self.last_step_t = now
        # The rate from the top worker's own clock where it said when the step ended (its reports may come
        # in batches: workers/runtime/reports.py); else from when the step's last report arrived here.
        since = entry.done - self.last_done if entry.done and self.last_done else now - prev
        self.last_done = entry.done
        if since <= 0:
            since = now - prev
        self.steps_done += 1
        self.stats.steps_done += 1
        self.stats.images_done += n
        self.stats.step_done_at.append(now)
        if self.stats.first_step_done is None:
            self.stats.first_step_done = now
        self.done_train[epoch] += 1
        add_skips(self.skipped[epoch], skipped_layers(entry.losses))
        self.on_step(StepRecord(epoch, step, self.steps_done, top, 100.0 * correct / n,
                                self.schedule(epoch), n / max(since, 1e-9), dict(sorted(entry.losses.items())),
                                n))
        self._maybe_close(epoch)

    def _maybe_close(self, epoch: int) -> None:
        fed = self.fed.get(epoch)
        if fed is None or self.done_train[epoch] < fed or self.test[epoch][2] < self.n_test * self.replicas:
            return
        if any(r.epoch == epoch for r in self.history):
            return
        loss_n, correct, n = self.train[epoch]
        t_correct, t_n, _ = self.test[epoch]
        acc = 100.0 * t_correct / max(t_n, 1)
        self.best = max(self.best, acc)
        started = self.epoch_started.get(epoch, time.perf_counter())
        record = EpochRecord(epoch, loss_n / max(n, 1), 100.0 * correct / max(n, 1), acc, self.best,
                             time.perf_counter() - started, dict(self.skipped.get(epoch, {})))
        self.history.append(record)
        self.on_epoch(record)


def epoch_line(r: EpochRecord) -> str:
    """The line both trainers print at the end of an epoch."""
    return (f"epoch {r.epoch + 1}: train loss {r.train_loss:.4f}, train acc {r.train_accuracy:.2f}%, "
            f"test acc {r.test_accuracy:.2f}% (best {r.best_accuracy:.2f}%), {r.seconds:.1f} s"
            + (f"; updates skipped (non-finite): {format_skips(r.skipped)}" if r.skipped else ""))

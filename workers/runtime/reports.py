"""A worker's step reports, batched: one METRICS message carries the figures of up to 16 steps or 20 ms.

A METRICS message per step costs the worker an encode and a send, both processes' ZeroMQ I/O threads a wake-up,
and the coordinator a receive, decode and check, about as much as the step's own message on the pipeline.
So a worker keeps each step's figures (`MetricsBatch.add`) and sends them with later steps' in one message
(`MetricsMeta.later`, workers/wire/protocol.py `metrics_rows`): every figure of every step, each step's row
checked by the coordinator like a message of its own. The batch goes out (worker.py) when it holds
`max_steps` steps or its oldest is `max_age_s` old (a waiting worker waits for input only that long), before
any other report (so reports keep their order), at a heartbeat, and before an error. What a batch delays is
when the coordinator hears of a step, by `max_age_s` at most; its rates come from each step's `done` (the
worker's clock), so per-step images/s do not bunch up (launch/run/progress.py). Workers on in-memory links
(tests) report every step at once.
"""

from __future__ import annotations

from collections.abc import Callable

from auglocal.workers.wire.messages import Kind, Message
from auglocal.workers.wire.protocol import MetricsMeta

METRICS_BATCH = 16        # steps one METRICS message carries at most
METRICS_AGE_S = 0.02      # the oldest step's figures wait at most this long while the worker is busy


class MetricsBatch:
    """The step figures a worker has not sent yet, in step order."""

    def __init__(self, sender: str, clock: Callable[[], float], max_steps: int = METRICS_BATCH,
                 max_age_s: float = METRICS_AGE_S):
        self.sender, self.clock = sender, clock
        self.max_steps, self.max_age_s = max_steps, max_age_s
        self._first: tuple[int, int, dict] | None = None
        self._later: list[dict] = []
        self._since = 0.0

    def __len__(self) -> int:
        return 0 if self._first is None else 1 + len(self._later)

    def add(self, epoch: int, step: int, figures: dict) -> None:
        """Hold one step's figures: MetricsMeta's fields but `later`, as a dict (a row as it travels)."""
        if self._first is None:
            self._first, self._since = (epoch, step, figures), self.clock()
        else:
            figures["epoch"], figures["step"] = epoch, step
            self._later.append(figures)

    def wait_ms(self, longest_ms: float) -> float:
        """How long the worker may wait for input before the held reports are due (`longest_ms` without any)."""
        if self._first is None:
            return longest_ms
        return max(0.0, min(longest_ms, (self._since + self.max_age_s - self.clock()) * 1000))

    def due(self) -> bool:
        """Whether the batch must go now even though the worker is busy."""
        return self._first is not None and (len(self) >= self.max_steps
                                            or self.clock() - self._since >= self.max_age_s)

    def take(self) -> Message:
        """The METRICS message of every step held (the first step's figures, later steps' as rows); empties it."""
        epoch, step, figures = self._first
        meta = MetricsMeta(**figures, later=self._later)
        self._first, self._later = None, []
        return Message(Kind.METRICS, self.sender, epoch, step, meta=meta)

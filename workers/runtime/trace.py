"""Per-worker spans (idle, compute, send, aux+update) as JSON lines, for the Gantt chart of `--trace`."""

from __future__ import annotations

import json


class Tracer:
    """Collects spans in memory and writes them once at the end; a no-op when no path is given.

    Times are `time.perf_counter()` seconds; on Linux that clock is system-wide (CLOCK_MONOTONIC), so
    spans of different worker processes line up on one time axis.
    """

    def __init__(self, rank: int, path: str | None):
        self.rank = rank
        self.path = path
        self.spans: list[dict] = []

    def span(self, name: str, epoch: int, step: int, t0: float, t1: float) -> None:
        if self.path is not None:
            self.spans.append({"rank": self.rank, "span": name, "epoch": epoch, "step": step,
                               "t0": t0, "t1": t1})

    def close(self) -> None:
        if self.path is None:
            return
        with open(self.path, "w", encoding="utf-8") as f:
            for s in self.spans:
                f.write(json.dumps(s) + "\n")
        self.spans.clear()

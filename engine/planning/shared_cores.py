"""Replaying a run on fewer CPU cores than busy processes: every compute phase is slowed by fair time-slicing.

The simulator's recurrence (engine/planning/simulator.py) gives each worker a core of its own. On a CPU run with
more workers than cores that is wrong in two ways a single total-work bound does not fix: a worker that shares
a core emits later, so its downstream starts later and may idle although the sum of the work would fill every
core; and the coordinator, which prepares each batch on the same cores, takes CPU time too. Linux's scheduler
shares the cores fairly among runnable threads, so this replay is a processor-sharing model: while n processes
are computing and n exceeds `cores`, each progresses at cores / n of its own speed. Waiting for an input, for a
credit or for a link costs no CPU (those are poll waits). The rules of the pipeline are the recurrence's:
a worker consumes its next message when it arrives and it is free, sends after its emit work when its
downstream has consumed the message `window` places earlier, and then does its tail work; the coordinator
produces a message (`feed_s` of CPU) and sends it under the same credit rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class _Process:
    """Where one process (the coordinator, or a worker) is with its current event."""

    event: int = 0
    state: str = "wait"      # wait (for its input) | emit (cpu) | credit (wait for one) | send (link) | tail (cpu)
    remaining: float = 0.0   # emit/tail: seconds of work left at full speed; send: seconds on the link left
    tail: float = 0.0        # the cpu work after the send
    nbytes: int = 0          # what the send carries


def replay_shared(costs: Sequence[Sequence[tuple[float, float, int]]], link: Callable[[int], float], window: int,
                  cores: int) -> tuple[list[list[float]], list[list[float]], list[float]]:
    """Replay a run's events through a chain of processes that share `cores` CPU cores.

    `costs[p][j]` = (emit seconds, tail seconds, bytes sent) of process p for event j at full speed: process 0
    is the coordinator (its input is always ready; its emit is producing the batch), 1.. the workers in
    pipeline order; the last one sends nothing. Returns (start, done, busy): start[p][j] when process p
    consumed event j (took it from its inbox), done[p][j] when it finished it, busy[p] its wall seconds of
    computing (time-sliced seconds count in full, as a worker's own clock counts them)."""
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    count, n = len(costs), len(costs[0]) if costs else 0
    start = [[float("nan")] * n for _ in range(count)]
    done = [[float("nan")] * n for _ in range(count)]
    arrival = [[float("nan")] * n for _ in range(count)]
    busy = [0.0] * count
    procs = [_Process() for _ in range(count)]
    largest = max((max(e, t) for row in costs for e, t, _ in row), default=0.0)
    tol = 1e-9 * max(largest, 1e-3)     # what rounding may leave of a finished phase (costs may be in MACs)
    now = 0.0
    while True:
        _take_every_step(procs, costs, link, window, now, tol, start, done, arrival)
        computing = [p for p in procs if p.state in ("emit", "tail")]
        sending = [p for p in procs if p.state == "send"]
        if not computing and not sending:
            break
        speed = min(1.0, cores / len(computing)) if computing else 1.0
        dt = min([p.remaining / speed for p in computing] + [p.remaining for p in sending])
        for i, p in enumerate(procs):
            if p.state in ("emit", "tail"):
                p.remaining -= dt * speed
                busy[i] += dt
            elif p.state == "send":
                p.remaining -= dt
        now += dt
    if any(p.event < n for p in procs):
        raise RuntimeError("shared-cores replay stalled before the last event (a credit that never comes)")
    return start, done, busy


def _take_every_step(procs: list[_Process], costs, link, window: int, now: float, tol: float,
                     start: list[list[float]], done: list[list[float]], arrival: list[list[float]]) -> None:
    """Make every transition that costs no time at `now`, until none is left."""
    n, last = len(costs[0]), len(procs) - 1
    moved = True
    while moved:
        moved = False
        for i, p in enumerate(procs):
            j = p.event
            if j >= n:
                continue
            if p.state == "wait" and (i == 0 or arrival[i][j] <= now):
                start[i][j] = now
                emit, p.tail, p.nbytes = costs[i][j]
                p.state, p.remaining, moved = "emit", emit, True
            if p.state == "emit" and p.remaining <= tol:
                p.state, p.remaining, moved = ("tail", p.tail, True) if i == last else ("credit", 0.0, True)
            if p.state == "credit" and (j < window or start[i + 1][j - window] <= now):
                p.state, p.remaining, moved = "send", link(p.nbytes), True
            if p.state == "send" and p.remaining <= tol:
                arrival[i + 1][j] = now
                p.state, p.remaining, moved = "tail", p.tail, True
            if p.state == "tail" and p.remaining <= tol:
                done[i][j] = now
                p.event, p.state, p.remaining, moved = j + 1, "wait", 0.0, True

"""The feed plan: the one place that knows the order of a run's minibatches, evaluations, checkpoints and stop.

Both the sequential trainer and the pipeline's coordinator consume `feed_plan`, so the two cannot disagree
about what is trained when: train steps of an epoch in order (cut short by max_steps), then a note that the
epoch's training batches are all fed, its test batches, a checkpoint marker, the epoch's end; and after the
last epoch a stop. A checkpoint marker also follows every `checkpoint_every`-th minibatch that is not the last
of its epoch (the epoch-end marker follows that one). The sequential trainer ignores markers.

    >>> [str(e) for e in feed_plan(FeedShape(epochs=1, steps=2, test_batches=1))]
    ['train e0 s0 (g0)', 'train e0 s1 (g1)', 'fed e0 (2 batches)', 'eval e0 b0', 'checkpoint -> e1 s0 (g2)', \
'end e0', 'stop']
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Position:
    """Where feeding (re)starts: the next minibatch and how many minibatches were fed before it."""

    epoch: int = 0
    step: int = 0
    global_step: int = 0


@dataclass(frozen=True)
class FeedShape:
    """What decides the plan: epochs, minibatches per epoch, test batches, and the optional limits."""

    epochs: int
    steps: int
    test_batches: int
    max_steps: int | None = None
    checkpoint_every: int = 0


@dataclass(frozen=True)
class TrainStep:
    epoch: int
    step: int
    global_step: int

    def __str__(self) -> str:
        return f"train e{self.epoch} s{self.step} (g{self.global_step})"


@dataclass(frozen=True)
class EpochFed:
    """Every training minibatch of `epoch` has been fed; `steps` counts them from the epoch's start."""

    epoch: int
    steps: int

    def __str__(self) -> str:
        return f"fed e{self.epoch} ({self.steps} batches)"


@dataclass(frozen=True)
class EvalBatch:
    epoch: int
    index: int

    def __str__(self) -> str:
        return f"eval e{self.epoch} b{self.index}"


@dataclass(frozen=True)
class CheckpointMarker:
    """Every layer has applied exactly the minibatches before `resume_at`."""

    resume_at: Position

    def __str__(self) -> str:
        p = self.resume_at
        return f"checkpoint -> e{p.epoch} s{p.step} (g{p.global_step})"


@dataclass(frozen=True)
class EpochEnd:
    """`epoch` is trained and evaluated: its record can be written."""

    epoch: int

    def __str__(self) -> str:
        return f"end e{self.epoch}"


@dataclass(frozen=True)
class Stop:
    def __str__(self) -> str:
        return "stop"


FeedEvent = TrainStep | EpochFed | EvalBatch | CheckpointMarker | EpochEnd | Stop


def feed_plan(shape: FeedShape, start: Position | None = None) -> Iterator[FeedEvent]:
    """The run's events in order from `start` (a committed checkpoint's position, or the beginning)."""
    start = start or Position()
    g = start.global_step
    for epoch in range(start.epoch, shape.epochs):
        first = start.step if epoch == start.epoch else 0
        fed = first
        for step in range(first, shape.steps):
            if shape.max_steps is not None and g >= shape.max_steps:
                break
            yield TrainStep(epoch, step, g)
            g += 1
            fed += 1
            every = shape.checkpoint_every
            if every and g % every == 0 and step + 1 < shape.steps:
                yield CheckpointMarker(Position(epoch, step + 1, g))
        if fed == 0:
            break
        yield EpochFed(epoch, fed)
        for index in range(shape.test_batches):
            yield EvalBatch(epoch, index)
        yield CheckpointMarker(Position(epoch + 1, 0, g))
        yield EpochEnd(epoch)
    yield Stop()


def format_feed(shape: FeedShape, first: int = 12) -> str:
    """The first events of the plan, one per line, for --dry-run."""
    events = []
    for i, event in enumerate(feed_plan(shape)):
        if i == first:
            events.append("...")
            break
        events.append(str(event))
    return "\n".join(events)

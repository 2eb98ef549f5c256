"""The feed plan: the one order of train steps, evaluations, checkpoint markers and stop."""

from auglocal.engine.feed import (
    CheckpointMarker,
    EpochEnd,
    EpochFed,
    EvalBatch,
    FeedShape,
    Position,
    Stop,
    TrainStep,
    feed_plan,
    format_feed,
)


def kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


def test_two_epochs_with_checkpoints_every_two_steps():
    events = list(feed_plan(FeedShape(epochs=2, steps=3, test_batches=2, checkpoint_every=2)))
    trains = [e for e in events if isinstance(e, TrainStep)]
    assert [(e.epoch, e.step, e.global_step) for e in trains] == [(0, 0, 0), (0, 1, 1), (0, 2, 2),
                                                                   (1, 0, 3), (1, 1, 4), (1, 2, 5)]
    markers = [e.resume_at for e in events if isinstance(e, CheckpointMarker)]
    # every 2nd minibatch unless it ends an epoch (the epoch-end marker follows it), and every epoch end
    assert markers == [Position(0, 2, 2), Position(1, 0, 3), Position(1, 1, 4), Position(2, 0, 6)]
    first_epoch = events[:events.index(EpochEnd(0)) + 1]
    assert kinds(first_epoch[-5:]) == ["EpochFed", "EvalBatch", "EvalBatch", "CheckpointMarker", "EpochEnd"]
    assert events[-1] == Stop() and EpochFed(1, 3) in events


def test_max_steps_cuts_the_epoch_then_evaluates_and_stops():
    events = list(feed_plan(FeedShape(epochs=3, steps=4, test_batches=1, max_steps=5)))
    assert [e.global_step for e in events if isinstance(e, TrainStep)] == [0, 1, 2, 3, 4]
    assert EpochFed(1, 1) in events and EvalBatch(1, 0) in events
    assert not any(isinstance(e, EpochFed) and e.epoch == 2 for e in events)
    assert events[-1] == Stop()


def test_resuming_from_a_marker_continues_exactly_after_it():
    shape = FeedShape(epochs=2, steps=3, test_batches=1, checkpoint_every=2)
    full = list(feed_plan(shape))
    marker = next(e for e in full if isinstance(e, CheckpointMarker))
    resumed = list(feed_plan(shape, marker.resume_at))
    assert resumed == full[full.index(marker) + 1:]


def test_resume_mid_epoch_counts_the_epoch_from_its_start():
    events = list(feed_plan(FeedShape(epochs=1, steps=4, test_batches=1), Position(0, 3, 3)))
    assert events[0] == TrainStep(0, 3, 3) and events[1] == EpochFed(0, 4)


def test_format_shows_the_first_events():
    text = format_feed(FeedShape(epochs=5, steps=100, test_batches=3), first=3)
    assert text.splitlines() == ["train e0 s0 (g0)", "train e0 s1 (g1)", "train e0 s2 (g2)", "..."]
